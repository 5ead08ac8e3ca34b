#!/usr/bin/env bash
# Boot-flow scenarios on the emulated Pi (qemu/firmware.ts), end to end:
#   1. initramfs.sh packs qemu/guest/init-bootflow.sh as /init with dist/zb-arm64
#   2. provision a boot partition on the host, as an installer would: the
#      user's zb/config.txt and zb/cmdline.txt, slot-a/ and slot-b/ with the
#      kernel and initramfs, then `dist/zb-x64 init --boot STAGE --slot a
#      --valid a,b`; copy it into the FAT partition of an MBR disk image
#      (sfdisk + mkfs.vfat --offset + mcopy: no loop mounts)
#   3. run the firmware emulator until the guest powers off; the guest's
#      /init follows /boot/scenario/steps (written here, per scenario)
#   4. check the boot sequence (from the emulator's JSON report) and the final
#      disk with the real fw_printenv and `dist/zb-x64 status --json`
# Scenarios:
#   try-commit         slot a arms a try of b; the try boot runs zbunlock
#                      (try → trying) and `zb mark-good`; b is committed, and
#                      the next plain reboot comes back on b from config.txt
#   try-broken-initrd  slot b's initrd is garbage, so the try kernel panics
#                      before any initramfs runs; zbunlock on slot a re-arms
#                      the try while zb_try_left > 0, then records the failure
# Prints the emulator's transcript and timings; on failure the console tail,
# and exits non-zero.
#
# Usage: bash qemu/bootflow.sh try-commit|try-broken-initrd|all
#        (env: ZB_QEMU_TIMEOUT seconds per boot, default 120)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BASE=qemu/.work/bootflow
ZB=dist/zb-x64
BUN=node_modules/.bin/bun
PART_START=2048 # sectors: the FAT partition starts at 1 MiB, as on Pi images
FAT_OFF=$((PART_START * 512))
# The host-side zb (init, status) must never reboot this machine; the guest
# does not inherit this environment.
export ZB_NO_REBOOT=1

die() { echo "cannot run the boot-flow scenarios: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

for tool in qemu-system-aarch64 sfdisk mkfs.vfat mcopy mmd mdir fw_printenv jq; do
  command -v "$tool" >/dev/null || die "'$tool' not found (install: apt-get install qemu-system-arm fdisk dosfstools mtools libubootenv-tool jq)"
done
[[ -x $ZB ]] || die "$ZB is missing (run: node_modules/.bin/bun build.ts)"
[[ -x $BUN ]] || die "$BUN is missing (run: npm ci)"
case "${1:-}" in
  try-commit | try-broken-initrd) SCENARIO=$1 ;;
  all) # One process per scenario: inside `f || …` bash would ignore set -e.
    rc=0
    for s in try-commit try-broken-initrd; do bash "${BASH_SOURCE[0]}" "$s" || rc=1; done
    exit "$rc" ;;
  *) die "usage: bash qemu/bootflow.sh try-commit|try-broken-initrd|all" ;;
esac

T0=$(now)
bash qemu/initramfs.sh qemu/guest/init-bootflow.sh "$BASE" # also fetches, and checks dist/zb-arm64
# shellcheck source=/dev/null
. "$BASE/guest.env"
echo "bootflow: initramfs ready in $(secs "$T0" "$(now)") s"

# --- provisioning -----------------------------------------------------------
# provision SCENARIO DIR: stage the boot partition in DIR/stage, let zb
# generate config.txt, the cmdlines and the env, and write DIR/disk.img.
provision() {
  local s=$1 w=$2 st=$2/stage mib
  mkdir -p "$st/zb" "$st/slot-a" "$st/slot-b" "$st/scenario"
  # The user's reference config. The [none] section must never apply: an
  # emulator that ignored filters would look for not-a-kernel.img and stop.
  cat >"$st/zb/config.txt" <<'EOF'
# Reference config.txt of the QEMU "Pi"; zb generates /config.txt from it.
arm_64bit=1
kernel=vmlinuz
initramfs initrd.img followkernel
[pi4]
arm_boost=1
[none]
kernel=not-a-kernel.img
[all]
EOF
  echo "console=ttyAMA0 panic=-1 zb.boot=/dev/vda1" >"$st/zb/cmdline.txt"
  for slot in a b; do
    cp "$KERNEL" "$st/slot-$slot/vmlinuz"
    cp "$INITRD" "$st/slot-$slot/initrd.img"
    # zb checks for a device tree as the Pi firmware does; QEMU virt makes its own.
    printf 'placeholder\n' >"$st/slot-$slot/virt.dtb"
  done
  case "$s" in
    try-commit)
      # After the commit, a plain reboot must come back on b from config.txt.
      printf '%s\n' "a normal 1: status; arm-try b" "b try 1: env; mark-good; status-json; reboot" \
        "b normal 1: status-json; poweroff" ;;
    try-broken-initrd)
      # Not an archive in any format the kernel knows: unpacking fails and
      # the kernel panics with no root file system, before any /init runs.
      head -c 4096 /dev/urandom >"$st/slot-b/initrd.img"
      printf '%s\n' "a normal 1: status; arm-try b" "a normal 2: status-json; poweroff" ;;
  esac >"$st/scenario/steps"

  echo "bootflow: \$ $ZB init --boot $st --slot a --valid a,b"
  "$ZB" init --boot "$st" --slot a --valid a,b 2>&1 | sed 's/^/bootflow: | /' \
    || die "$ZB init exited ${PIPESTATUS[0]}"
  for f in config.txt zb/zb.env zb/zb.env.redund slot-a/cmdline.txt slot-b/cmdline.txt slot-a/cmdline-try.txt slot-b/cmdline-try.txt; do
    [[ -f "$st/$f" ]] || die "$ZB init did not create $f in $st"
  done
  [[ ! -e "$st/tryboot.txt" ]] || die "$ZB init left a tryboot.txt in $st"
  echo "bootflow: generated config.txt: $(grep -v '^#' "$st/config.txt" | tr '\n' ' ')"

  # MBR with one bootable FAT32 partition (type c, LBA) from 1 MiB to the end,
  # sized for the staged files plus room for the env and tryboot.txt.
  mib=$(($(du -sm "$st" | cut -f1) + 64))
  truncate -s "${mib}M" "$w/disk.img"
  printf 'label: dos\nlabel-id: 0x2b0a0001\nstart=%s, type=c, bootable\n' "$PART_START" \
    | sfdisk -q "$w/disk.img" || die "sfdisk failed on $w/disk.img"
  mkfs.vfat -F 32 -n ZBBOOT --offset "$PART_START" "$w/disk.img" $(((mib - 1) * 1024)) >/dev/null \
    || die "mkfs.vfat failed on $w/disk.img"
  mcopy -s -i "$w/disk.img@@$FAT_OFF" "$st"/* ::/ || die "mcopy into $w/disk.img failed"
}

# --- checks -----------------------------------------------------------------
# The boot sequence as words: slot letter, '*' when the firmware read
# tryboot.txt, then how the boot ended, e.g. "a:tryboot b*:poweroff".
sequence() {
  jq -r '(.osPrefix // "?" | sub("^slot-"; "") | sub("/$"; ""))
    + (if .config == "tryboot.txt" then "*" else "" end) + ":"
    + (if .ended == "reboot" and (.rebootCommand // "" | contains(" tryboot")) then "tryboot" else .ended end)' "$1" | tr '\n' ' ' | sed 's/ $//'
}
# env_after REPORT BOOT NAME: a variable of the env pair after that boot.
env_after() { jq -r --argjson n "$2" --arg k "$3" 'select(.boot == $n) | .envAfter[$k] // ""' "$1"; }
host_env() { fw_printenv -c "$FINAL/fw_env.config" -n "$1" 2>/dev/null || true; }

CHECK_PREFIX=bootflow
# shellcheck source=qemu/checks.sh
. qemu/checks.sh
# Every boot that read tryboot.txt had kernel_status=trying on its cmdline.
try_cmdlines() { jq -se 'map(select(.config == "tryboot.txt") | .cmdline | test("(^| )kernel_status=trying( |$)")) | all' "$1" >/dev/null; }
# No boot that read tryboot.txt printed a guest marker (none reached /init).
try_silent() { jq -se 'map(select(.config == "tryboot.txt") | .markers | length) | add // 0 | . == 0' "$1" >/dev/null; }
# has_marker REPORT BOOT LINE: that boot's guest printed exactly LINE.
has_marker() { jq -se --argjson n "$2" --arg m "$3" 'map(select(.boot == $n) | .markers | index($m) != null) | any' "$1" >/dev/null; }
# guest_status REPORT BOOT: the JSON the guest's last `zb status --json` printed in that boot.
guest_status() {
  jq -r --argjson n "$2" 'select(.boot == $n) | .markers[]' "$1" \
    | awk '/^ZB\$ zb status .*--json/ { buf = ""; on = 1; next } on && /^ZB\| / { buf = buf substr($0, 5) "\n"; next } { on = 0 } END { printf "%s", buf }'
}
# An event that names slot b and a failure.
events_failure() { jq -e '[.events[] | tostring | test("fail"; "i") and test("\\bb\\b")] | any' <<<"$1" >/dev/null 2>&1; }
# Every boot that read tryboot.txt failed to unpack its initramfs.
try_unpack_failed() { jq -se 'map(select(.config == "tryboot.txt") | has("initramfsFailed")) | all' "$1" >/dev/null; }


run_scenario() {
  local s=$1 w=$BASE/$1 t0 t1 t2 rc=0 seq want budget report status guest
  t0=$(now)
  rm -rf "$w"
  mkdir -p "$w"
  echo "===== bootflow scenario $s ====="
  provision "$s" "$w"
  t1=$(now)
  echo "bootflow: disk $w/disk.img ready in $(secs "$t0" "$t1") s; starting the firmware emulator"
  report=$w/fw/report.jsonl
  "$BUN" qemu/firmware.ts --disk "$w/disk.img" --work "$w/fw" --report "$report" \
    --max-boots 12 --timeout "${ZB_QEMU_TIMEOUT:-120}" || rc=$?
  t2=$(now)
  [[ -s $report ]] || { echo "bootflow: the emulator wrote no report (exit $rc)" >&2; console_tail "$w/fw/console.log"; return 1; }

  FAILED=""
  check "the emulator stopped at a guest power-off (exit $rc)" test "$rc" -eq 0
  FINAL=$w/final
  mkdir -p "$FINAL"
  mcopy -s -n -i "$w/disk.img@@$FAT_OFF" '::/*' "$FINAL/" || die "cannot copy the FAT back from $w/disk.img"
  printf '%s 0x0 0x4000\n' "$FINAL/zb/zb.env" "$FINAL/zb/zb.env.redund" >"$FINAL/fw_env.config"
  status=$("$ZB" status --boot "$FINAL" --json 2>&1) || true
  echo "bootflow: \$ $ZB status --boot $FINAL --json"
  printf '%s\n' "$status" | sed 's/^/bootflow: | /'
  seq=$(sequence "$report")
  check "no ZB-BOOTFLOW-FAIL marker in the guest" not grep -q 'ZB-BOOTFLOW-FAIL' "$w/fw/console.log"
  check "every tryboot.txt boot had kernel_status=trying on its cmdline" try_cmdlines "$report"

  case "$s" in
    try-commit)
      is "boot sequence" "$seq" "a:tryboot b*:reboot b:poweroff"
      is "after boot 1: kernel_status" "$(env_after "$report" 1 kernel_status)" "try"
      is "after boot 1: zb_try_slot" "$(env_after "$report" 1 zb_try_slot)" "b"
      check "in the try boot, after zbunlock: kernel_status=trying" has_marker "$report" 2 "ZB| kernel_status=trying"
      is "committed slot (fw_printenv zb_slot)" "$(host_env zb_slot)" "b"
      is "kernel_status (fw_printenv)" "$(host_env kernel_status)" ""
      check "config.txt has os_prefix=slot-b/" grep -qx 'os_prefix=slot-b/' "$FINAL/config.txt"
      is "zb status .committed" "$(jq -r '.committed' <<<"$status" 2>&1)" "b"
      guest=$(guest_status "$report" 2)
      is "in the try boot, after mark-good: guest zb status .committed" "$(jq -r '.committed' <<<"$guest" 2>&1)" "b"
      is "in the try boot, after mark-good: guest zb status .booted.slot" "$(jq -r '.booted.slot' <<<"$guest" 2>&1)" "b"
      guest=$(guest_status "$report" 3)
      is "next boot (config.txt): guest zb status .booted" "$(jq -c '.booted | [.slot, .tryboot]' <<<"$guest" 2>&1)" '["b",false]'
      ;;
    try-broken-initrd)
      budget=$(env_after "$report" 1 zb_try_left)
      check "the arm set a re-arm budget zb_try_left > 0 ('$budget')" grep -qx '[1-9][0-9]*' <<<"$budget"
      [[ $budget =~ ^[1-9][0-9]*$ ]] || budget=0
      want="a:tryboot"
      for ((i = 0; i < budget; i++)); do want="$want b*:panic a:tryboot"; done
      want="$want b*:panic a:poweroff"
      is "boot sequence (1 + $budget tryboot attempts)" "$seq" "$want"
      for ((i = 1; i <= budget; i++)); do
        is "after re-arm $i: zb_try_left" "$(env_after "$report" $((2 * i + 1)) zb_try_left)" "$((budget - i))"
        # zbunlock runs without the JIT, so bun:ffi (reboot(2)) is not at hand:
        # it hands the tryboot reboot to `zb reboot --raw` (lib/sys/jit.ts).
        check "re-arm $i: zbunlock handed the reboot to zb reboot --raw" \
          has_marker "$report" $((2 * i + 1)) 'zb reboot: rebooting ("0 tryboot"), boot state untouched'
      done
      check "no try boot printed a guest marker (none reached its initramfs)" try_silent "$report"
      check "every try kernel reported 'Initramfs unpacking failed'" try_unpack_failed "$report"
      is "committed slot (fw_printenv zb_slot)" "$(host_env zb_slot)" "a"
      is "kernel_status (fw_printenv)" "$(host_env kernel_status)" ""
      is "slot b invalid (fw_printenv zb_valid_b)" "$(host_env zb_valid_b)" "0"
      check "config.txt has os_prefix=slot-a/" grep -qx 'os_prefix=slot-a/' "$FINAL/config.txt"
      is "zb status .committed" "$(jq -r '.committed' <<<"$status" 2>&1)" "a"
      is "zb status .slots.b.valid" "$(jq -r '.slots.b.valid' <<<"$status" 2>&1)" "false"
      check "zb status events record a failure of b" events_failure "$status"
      guest=$(guest_status "$report" "$(jq -s length "$report")")
      is "last boot: guest zb status .booted.slot" "$(jq -r '.booted.slot' <<<"$guest" 2>&1)" "a"
      is "last boot: guest zb status .committed" "$(jq -r '.committed' <<<"$guest" 2>&1)" "a"
      ;;
  esac
  check "no tryboot.txt left" test ! -e "$FINAL/tryboot.txt"

  echo "bootflow: $s: boots: $seq"
  echo "bootflow: $s: timings: provision $(secs "$t0" "$t1") s, emulator $(secs "$t1" "$t2") s" \
    "(per boot: $(jq -r '"\(.seconds)"' "$report" | tr '\n' ' ' | sed 's/ $//') s), total $(secs "$t0" "$(now)") s"
  if [[ -n $FAILED ]]; then
    echo "bootflow: $s FAILED:${FAILED#;}" >&2
    console_tail "$w/fw/console.log"
    return 1
  fi
  echo "ZB-BOOTFLOW-OK $s"
}

run_scenario "$SCENARIO"
