/*
 * A stand-in for machined that fails at once: the "bad update" of the rollback test
 * (tests/tests/qemu_rollback.rs, issue 6 test c). Built by the test with
 * `aarch64-linux-gnu-gcc -static` (scripts/setup-host installs the cross compiler and
 * libc6-dev-arm64-cross) and packed as the initramfs's /init of a signed image. As PID 1
 * its exit makes the kernel panic ("Attempted to kill init"); the board's `panic=10`
 * resets it, and U-Boot's boot counting decides what boots next.
 */
#include <stdio.h>

int main(void)
{
	fputs("[bad-machined] exiting at start with status 3\n", stderr);
	return 3;
}
