# shellcheck shell=sh
# A recording stand-in for /usr/share/initramfs-tools/hook-functions, used by
# hook.test.ts. Each help function appends "name args" to $ZB_FAKE_LOG and
# creates under $DESTDIR what the real one would, minus the ldd walk, modprobe
# and the usr-merge canonicalisation. Return codes follow the real ones.

_fake_log()
{
	printf '%s\n' "$*" >>"${ZB_FAKE_LOG:?}"
}

# _fake_copy SRC [TARGET]: 0 copied, 1 the target existed, 2 no source.
_fake_copy()
{
	[ -f "$1" ] || return 2
	_fake_target="${2:-$1}"
	if [ -d "${DESTDIR}${_fake_target}" ] || [ "${_fake_target%/}" != "${_fake_target}" ]; then
		_fake_target="${_fake_target%/}/${1##*/}"
	fi
	[ -e "${DESTDIR}${_fake_target}" ] && return 1
	mkdir -p "${DESTDIR}${_fake_target%/*}"
	cp "$1" "${DESTDIR}${_fake_target}"
}

copy_file()
{
	_fake_log "copy_file $*"
	_fake_copy "$2" "${3:-}"
}

# The real copy_exec maps copy_file's 1 (existed) to 0 and 2 to 1.
copy_exec()
{
	_fake_log "copy_exec $*"
	_fake_copy "$1" "${2:-}" || return $(($? - 1))
}

manual_add_modules()
{
	_fake_log "manual_add_modules $*"
}

force_load()
{
	_fake_log "force_load $*"
	manual_add_modules "$1"
	mkdir -p "${DESTDIR}/conf"
	echo "$@" >>"${DESTDIR}/conf/modules"
}

add_modules_from_file()
{
	_fake_log "add_modules_from_file $*"
	[ -e "$1" ] || return 0
	grep '^[^#]' "$1" | while read -r module args; do
		force_load "${module}" "${args}"
	done
}
