# shellcheck shell=bash
# Test checks shared by the qemu/ scenario scripts (sourced). Set CHECK_PREFIX
# (e.g. "unlock") first. check DESCRIPTION CMD…: run CMD as a test and collect
# failures in FAILED instead of stopping, so one run reports every mismatch.
FAILED=""
check() {
  local what=$1
  shift
  if "$@"; then echo "$CHECK_PREFIX: ok   $what"; else echo "$CHECK_PREFIX: FAIL $what" >&2; FAILED="$FAILED; $what"; fi
}
# is DESCRIPTION ACTUAL EXPECTED
is() { check "$1 ('$2')" test "$2" == "$3"; }
# not CMD…: CMD must fail (for check).
not() { ! "$@"; }
# console_tail LOG: the last 40 lines of a guest console log on stderr, after a failure.
console_tail() {
  echo "---- last 40 lines of the guest console ($1) ----" >&2
  tr -d '\r' <"$1" | tail -n 40 >&2 || true
  echo "---- end of console ----" >&2
}
