#!/bin/busybox sh
# PID 1 of the unlock guest (qemu/unlock.sh packs it as /init). One initramfs
# serves both runs of a scenario; the host appends a second, uncompressed cpio
# that makes the difference, and says on the kernel cmdline which run this is:
#   zbtest.mode=zb        the credentials cpio (/zb/credentials/: meta.json,
#                         root.sealed) is appended; `zbunlock --no-reboot`,
#                         started before the modules load and let go once
#                         the disks are there (the real initramfs's
#                         init-top/prestart-zb and local-top/zb, through the
#                         same /scripts/zb-functions), runs the boot state
#                         machine, unseals the LUKS key with the TPM (swtpm
#                         behind tpm-tis-device) and opens /dev/mapper/zb-root
#   zbtest.mode=baseline  /key.bin is appended; a plain
#                         `cryptsetup open --key-file /key.bin` opens the same
#                         LUKS2 root: the reference zbunlock is measured
#                         against (a key in the clear, insecure on purpose)
# Both then mount the root read-only and print the marker file inside it.
# Console markers for the host (uptime stamps in seconds, from /proc/uptime):
#   ZB-T-INIT <s>   first thing /init does        ZB-T-MODS <s>  modules loaded
#   ZB-T-DEV <s>    /dev/vda1, /dev/vda2 present  ZB-T-UNLOCK <s> mapping open
#   ZB-T-ROOT <s>   root mounted
#   ZB| <s> <line>             output of zbunlock / cryptsetup, stamped
#   ZB-UNLOCK-MARKER <token>   the content of /etc/zb-marker on the root
#   ZB-BOOT-MOUNTED yes|no     (zb) is the boot partition still mounted on /run/zb/boot
#   ZB-UNLOCK-FAIL <exit> <what>   the unlock (or a step) failed
#   ZB-DIAG <s> s: <command> (exit N)   timings after the measured window
#   ZB-UNLOCK-DONE             just before the power-off
# then the guest powers off (QEMU runs with -no-reboot).

# shellcheck source=qemu/guest/lib.sh
. /lib/zb-guest.sh
guest_early /mnt /run
echo "ZB-T-INIT $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
guest_applets

stamp() { echo "ZB-T-$1 $(up)"; }
off() { power_off "ZB-UNLOCK-DONE"; }
fail() { echo "ZB-UNLOCK-FAIL $1 $2"; off; }
# show TEXT: print captured output to the console, one prefixed line each.
show() { [ -n "$1" ] && printf '%s\n' "$1" | sed 's/^/ZB| /'; }

MODE=""
read -r CMDLINE </proc/cmdline
# shellcheck disable=SC2086 # the cmdline is a list of words
for arg in $CMDLINE; do
  case "$arg" in zbtest.mode=*) MODE=${arg#zbtest.mode=} ;; esac
done
case "$MODE" in
  zb | baseline) ;;
  *) fail 2 "no zbtest.mode=zb|baseline on the kernel cmdline: $CMDLINE" ;;
esac

# zb: the sequence of a real initramfs (initramfs-hooks/): init-top/prestart-zb
# starts zbunlock before udev loads the drivers (here: before the insmod
# loop), and it waits for local-top/zb's go. Its lines are stamped as they
# arrive.
if [ "$MODE" = zb ]; then
  # shellcheck source=initramfs-hooks/scripts/zb-functions
  . /scripts/zb-functions
  (zb_prestart --no-reboot 2>&1 | while IFS= read -r line; do
    read -r t _ </proc/uptime
    echo "ZB| $t $line"
  done) &
fi
while read -r ko; do
  insmod "$ko" || fail 1 "insmod $ko failed"
done </etc/modules.order
stamp MODS
# virtio-blk probes and scans partitions asynchronously.
i=0
while [ ! -b /dev/vda1 ] || [ ! -b /dev/vda2 ]; do
  i=$((i + 1))
  [ "$i" -le 200 ] || fail 1 "/dev/vda1 and /dev/vda2 did not appear in 10 s"
  sleep 0.05
done
stamp DEV

# cryptsetup keeps its per-device locks here; without udev, libdevmapper
# notices that /run/udev/control is missing and creates /dev/mapper/zb-root
# itself.
mkdir -p /run/cryptsetup
# stamped CMD…: run CMD, prefix each line it prints with the uptime at which
# it arrived (read is a shell builtin: no fork per line), and end with
# "rc=N". zb writes each line with write(2) as it happens, so the stamps
# show where zbunlock's time goes.
stamped() {
  { "$@" 2>&1; echo "rc=$?"; } | while IFS= read -r line; do
    read -r t _ </proc/uptime
    echo "$t $line"
  done
}
if [ "$MODE" = zb ]; then
  # local-top/zb's zb_unlock: go for the zbunlock started above (or a new
  # one, as a fallback), which mounts zb.boot=/dev/vda1 itself (on
  # /run/zb/boot), reads /etc/zb/hsm.conf and /zb/credentials/, unseals with
  # /dev/tpmrm0 and opens the LUKS device whose UUID meta.json names.
  OUT=$(stamped zb_unlock --no-reboot)
else
  OUT=$(stamped cryptsetup open --key-file /key.bin /dev/vda2 zb-root)
fi
rc=$(printf '%s\n' "$OUT" | sed -n 's/^[0-9.]* rc=\([0-9]*\)$/\1/p')
show "$(printf '%s\n' "$OUT" | grep -v '^[0-9.]* rc=[0-9]*$')"
[ -n "$rc" ] || rc=1
[ "$rc" -eq 0 ] || fail "$rc" "$MODE unlock"
[ -b /dev/mapper/zb-root ] || fail 1 "$MODE unlock exited 0 but /dev/mapper/zb-root does not exist"
stamp UNLOCK

mount -t ext4 -o ro /dev/mapper/zb-root /mnt || fail 1 "mount -t ext4 /dev/mapper/zb-root /mnt"
stamp ROOT
[ -f /mnt/etc/zb-marker ] || fail 1 "the root has no /etc/zb-marker"
echo "ZB-UNLOCK-MARKER $(cat /mnt/etc/zb-marker)"
# zbunlock mounted the boot partition itself: it must be gone again, or
# initramfs-tools would carry it into the booted system with /run.
if [ "$MODE" = zb ]; then
  if grep -q ' /run/zb/boot ' /proc/mounts; then echo "ZB-BOOT-MOUNTED yes"; else echo "ZB-BOOT-MOUNTED no"; fi
fi

# Where zbunlock's time goes, measured after the timed window: Bun's start-up
# (in the baseline run the first `zb` ever started, so the 110 MB binary is
# paged in from the initramfs; in the zb run zbunlock already did that), and
# in the zb run one TPM unseal through the kernel's resource manager, which
# must be refused (exit 20): zbunlock extended the lock PCR 15 after unlocking.
diag() {
  t0=$(up)
  "$@" >/dev/null 2>&1
  rc=$?
  echo "ZB-DIAG $(since "$t0") s: $* (exit $rc)"
}
diag zb version
diag zb version
if [ "$MODE" = zb ]; then
  diag zb hsm probe
  diag zb hsm unseal /zb/credentials/root.sealed -o -
fi
off
