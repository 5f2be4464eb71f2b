# Basalt OS boot script (U-Boot hush). Rendered per board by basalt-bootloader (module
# `script`) from overlays/common/u-boot/boot.cmd, then packed into boot.scr.
#
# A/B choice with boot counting, compatible with RAUC's U-Boot integration:
#   BOOT_ORDER   slots in the order they are tried, e.g. "A B"
#   BOOT_A_LEFT  boot attempts left for slot A (0..9)
#   BOOT_B_LEFT  boot attempts left for slot B (0..9)
# The first slot in BOOT_ORDER with attempts left is chosen; its counter is decremented and
# the environment saved BEFORE anything of the slot is loaded. If no slot has attempts left,
# both counters are reset to @BOOT_TRIES@, saved, and the board resets.
# BASALT_TRIAL and BASALT_LAST_FAILED belong to machined (see basalt-bootloader's
# boot_counting module); the script only carries them through the env file unchanged.
# Temporary values are hush locals (name=value), so saveenv never persists them.

basalt_slot=
basalt_part=

# "file" mode: the A/B variables live in @ENV_FILE@ on BOOT (CRC32 + name=value data).
# "saveenv" mode: U-Boot loaded its environment itself.
if test "@ENV_MODE@" = "file"; then
	if test -e @DEVTYPE@ @DEVNUM@:@BOOT_PART@ @ENV_FILE@; then
		if fatload @DEVTYPE@ @DEVNUM@:@BOOT_PART@ @KERNEL_ADDR@ @ENV_FILE@; then
			env import -c @KERNEL_ADDR@ ${filesize} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BASALT_TRIAL BASALT_LAST_FAILED
		fi
	fi
fi

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT @BOOT_TRIES@
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT @BOOT_TRIES@

for BOOT_SLOT in "${BOOT_ORDER}"; do
	if test -z "${basalt_slot}"; then
		if test "${BOOT_SLOT}" = "A"; then
			if test ${BOOT_A_LEFT} -gt 0; then
				setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
				basalt_slot=A
				basalt_part=@SLOT_A_PART@
			fi
		elif test "${BOOT_SLOT}" = "B"; then
			if test ${BOOT_B_LEFT} -gt 0; then
				setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
				basalt_slot=B
				basalt_part=@SLOT_B_PART@
			fi
		fi
	fi
done

if test -z "${basalt_slot}"; then
	echo "Basalt: no slot has boot attempts left (BOOT_ORDER=${BOOT_ORDER}); giving both @BOOT_TRIES@"
	setenv BOOT_A_LEFT @BOOT_TRIES@
	setenv BOOT_B_LEFT @BOOT_TRIES@
fi

# Save the counters before anything of the slot is loaded. A failed save does not stop the
# boot: a good slot must still come up.
if test "@ENV_MODE@" = "file"; then
	env export -c -s @ENV_SIZE@ @KERNEL_ADDR@ BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BASALT_TRIAL BASALT_LAST_FAILED
	fatwrite @DEVTYPE@ @DEVNUM@:@BOOT_PART@ @KERNEL_ADDR@ @ENV_FILE@ @ENV_SIZE@
else
	saveenv
fi

if test -z "${basalt_slot}"; then
	reset
fi

echo "Basalt: booting slot ${basalt_slot} (@DEVTYPE@ @DEVNUM@:${basalt_part}); attempts left A=${BOOT_A_LEFT} B=${BOOT_B_LEFT}"

# The slot's dm-verity root hash: basalt_roothash=<hex> in @SLOT_ENV@ inside the slot.
# Any load failure from here on resets the board: this attempt is already counted.
setenv basalt_roothash
if load @DEVTYPE@ @DEVNUM@:${basalt_part} @KERNEL_ADDR@ @SLOT_ENV@; then
	env import -t @KERNEL_ADDR@ ${filesize} basalt_roothash
fi
if test -z "${basalt_roothash}"; then
	echo "Basalt: slot ${basalt_slot} has no basalt_roothash in @SLOT_ENV@"
	reset
fi

basalt_fdt=${fdtcontroladdr}
if test -n "@DTB@"; then
	if load @DEVTYPE@ @DEVNUM@:${basalt_part} @FDT_ADDR@ @DTB@; then
		basalt_fdt=@FDT_ADDR@
	else
		echo "Basalt: no @DTB@ in slot ${basalt_slot}; using the U-Boot device tree"
	fi
fi

load @DEVTYPE@ @DEVNUM@:${basalt_part} @KERNEL_ADDR@ @KERNEL@ || reset
load @DEVTYPE@ @DEVNUM@:${basalt_part} @RAMDISK_ADDR@ @INITRD@ || reset
basalt_initrd_size=${filesize}

setenv bootargs "console=@CONSOLE@ basalt.slot=${basalt_slot} basalt.roothash=${basalt_roothash} @EXTRA_ARGS@"
booti @KERNEL_ADDR@ @RAMDISK_ADDR@:${basalt_initrd_size} ${basalt_fdt}
echo "Basalt: booti failed for slot ${basalt_slot}"
reset
