# shellcheck shell=sh
# A recording stand-in for the initramfs's /scripts/functions, used by
# local-top.test.ts: the log and panic helpers append one line each to
# $ZB_FAKE_LOG. panic returns, as the real one does once the rescue shell
# exits, so the test also sees what the script does afterwards.

_fake_log()
{
	printf '%s\n' "$*" >>"${ZB_FAKE_LOG:?}"
}

log_success_msg() { _fake_log "success $*"; }
log_failure_msg() { _fake_log "failure $*"; }
log_warning_msg() { _fake_log "warning $*"; }
log_begin_msg() { _fake_log "begin $*"; }
log_end_msg() { _fake_log "end"; }
panic() { _fake_log "panic $*"; }
