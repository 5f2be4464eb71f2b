# Basalt OS boot script (U-Boot hush). Rendered per board by basalt-bootloader (module
# `script`) from overlays/common/u-boot/boot.cmd, then packed into boot.scr.
#
# A/B choice with boot counting, compatible with RAUC's U-Boot integration:
#   BOOT_ORDER   slots in the order they are tried, e.g. "A B"
#   BOOT_A_LEFT  boot attempts left for slot A (0..9)
#   BOOT_B_LEFT  boot attempts left for slot B (0..9)
# The first slot in BOOT_ORDER with attempts left is chosen; its counter is decremented and
# the environment saved BEFORE anything of the slot is loaded. If no slot has attempts left,
# both counters are reset to 3, saved, and the board resets.
# BASALT_TRIAL and BASALT_LAST_FAILED belong to machined (see basalt-bootloader's
# boot_counting module); the script only carries them through the env file unchanged.
# Temporary values are hush locals (name=value), so saveenv never persists them.

basalt_slot=
basalt_part=

# "file" mode: the A/B variables live in uboot.env on BOOT (CRC32 + name=value data).
# "saveenv" mode: U-Boot loaded its environment itself.
if test "file" = "file"; then
	if test -e virtio 0:1 uboot.env; then
		if fatload virtio 0:1 ${kernel_addr_r} uboot.env; then
			env import -c ${kernel_addr_r} ${filesize} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BASALT_TRIAL BASALT_LAST_FAILED
		fi
	fi
fi

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

for BOOT_SLOT in "${BOOT_ORDER}"; do
	if test -z "${basalt_slot}"; then
		if test "${BOOT_SLOT}" = "A"; then
			if test ${BOOT_A_LEFT} -gt 0; then
				setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
				basalt_slot=A
				basalt_part=2
			fi
		elif test "${BOOT_SLOT}" = "B"; then
			if test ${BOOT_B_LEFT} -gt 0; then
				setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
				basalt_slot=B
				basalt_part=3
			fi
		fi
	fi
done

if test -z "${basalt_slot}"; then
	echo "Basalt: no slot has boot attempts left (BOOT_ORDER=${BOOT_ORDER}); giving both 3"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
fi

# Save the counters before anything of the slot is loaded. A failed save does not stop the
# boot: a good slot must still come up.
if test "file" = "file"; then
	env export -c -s 0x4000 ${kernel_addr_r} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BASALT_TRIAL BASALT_LAST_FAILED
	fatwrite virtio 0:1 ${kernel_addr_r} uboot.env 0x4000
else
	saveenv
fi

if test -z "${basalt_slot}"; then
	reset
fi

echo "Basalt: booting slot ${basalt_slot} (virtio 0:${basalt_part}); attempts left A=${BOOT_A_LEFT} B=${BOOT_B_LEFT}"

# The slot's dm-verity root hash: basalt_roothash=<hex> in basalt/slot.env inside the slot.
# Any load failure from here on resets the board: this attempt is already counted.
setenv basalt_roothash
if load virtio 0:${basalt_part} ${kernel_addr_r} basalt/slot.env; then
	env import -t ${kernel_addr_r} ${filesize} basalt_roothash
fi
if test -z "${basalt_roothash}"; then
	echo "Basalt: slot ${basalt_slot} has no basalt_roothash in basalt/slot.env"
	reset
fi

basalt_fdt=${fdtcontroladdr}
if test -n ""; then
	if load virtio 0:${basalt_part} ${fdt_addr_r} ; then
		basalt_fdt=${fdt_addr_r}
	else
		echo "Basalt: no  in slot ${basalt_slot}; using the U-Boot device tree"
	fi
fi

load virtio 0:${basalt_part} ${kernel_addr_r} Image || reset
load virtio 0:${basalt_part} ${ramdisk_addr_r} initrd.img || reset
basalt_initrd_size=${filesize}

setenv bootargs "console=ttyAMA0,115200 basalt.slot=${basalt_slot} basalt.roothash=${basalt_roothash} "
booti ${kernel_addr_r} ${ramdisk_addr_r}:${basalt_initrd_size} ${basalt_fdt}
echo "Basalt: booti failed for slot ${basalt_slot}"
reset
