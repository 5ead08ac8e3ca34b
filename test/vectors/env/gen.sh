#!/usr/bin/env bash
# Regenerate the U-Boot env golden vectors from the real tools.
#
#   bash test/vectors/env/gen.sh
#
# Everything here is produced by Debian's mkenvimage (u-boot-tools) and
# fw_setenv/fw_printenv (libubootenv-tool); the exact versions go to VERSIONS.
# test/lib/env/golden.test.ts checks lib/env/codec.ts against these files.
#
# What is written (all into this directory; the *.txt inputs are written by
# this script too, so the directory is reproducible from this file alone):
#   mk-*.bin        mkenvimage images (envspec.md §1.1, §1.7), with and
#                   without -r, at several sizes, one with -p 0x00
#   seq-*-NN*.bin   snapshots of redundant pairs after each fw_setenv write
#                   (envspec.md §1.2 save rule, §1.6 fw_env.config)
#   seq-*.script    the `fw_setenv -s` scripts used by a step
#   manifest.json   one entry per vector; built by the Python at the bottom
#   VERSIONS        `dpkg-query -W` of the two tool packages
#
# Where the expected values come from, so that no expectation is invented:
#   - vars: the input files, with the fw_setenv operations applied by a small
#     model below; the model's result must equal what fw_printenv prints for
#     the same file, or generation fails;
#   - flag: the byte the tool wrote at offset 4 (checked against the
#     counter rule: written copy = active + 1 mod 256);
#   - active copy: observed, by writing a probe variable into a scratch copy
#     of the pair with fw_setenv; libubootenv writes the copy it did *not*
#     read (src/uboot_env.c libuboot_env_store), so the untouched one is the
#     active one. When the copies differ, fw_printenv's output must agree.
#   - padding: observed. libubootenv pads from an uninitialised malloc buffer
#     (envspec.md §1.1), so its padding is recorded as "undefined" together
#     with the byte actually seen, when it is uniform.
set -euo pipefail
export LC_ALL=C

for tool in mkenvimage fw_setenv fw_printenv python3 dpkg-query cmp; do
  command -v "$tool" >/dev/null || { echo "gen.sh: $tool not found (run .ci/setup)" >&2; exit 1; }
done

OUT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/log.tsv
: >"$LOG"
cd "$OUT"
rm -f ./*.bin ./*.txt ./*.script manifest.json VERSIONS

json() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; }
log() { local IFS=$'\t'; printf '%s\n' "$*" >>"$LOG"; }

# ---------------------------------------------------------------- inputs
# mkenvimage input: `name=value` lines, kept in input order (envspec.md §1.7).
printf 'foo=bar\nkernel_status=try\n' >tiny.txt
: >empty.txt
# Bytewise sorted, so an encoder that sorts (U-Boot hexport, libubootenv and
# ours) must reproduce the image byte for byte.
cat >sorted.txt <<'EOF'
bootcmd=run zb_boot
bootcount=0
bootdelay=0
bootlimit=3
kernel_status=
snap_kernel=pi-kernel_123.snap
snap_try_kernel=
snapd_recovery_mode=run
snapd_recovery_system=20240101
upgrade_available=0
zb_slot=a
EOF
# Same kind of content in a non-sorted order (uppercase, '_' and digits
# interleaved with lowercase, which a locale-aware sort would get wrong).
cat >unsorted.txt <<'EOF'
zb_slot=b
Zeta=upper
snap_kernel=pi-kernel_7.snap
_under=1
kernel_status=try
9lives=cat
bootcount=2
EOF
# Values with spaces, '=', an empty value, leading/trailing blanks and a long
# value; names sorted.
{
  printf 'args=console=serial0,115200 console=tty1 root=LABEL=writable rw\n'
  printf 'empty=\n'
  printf 'eq===x==\n'
  printf 'lead= two leading\n'
  printf 'long=%s\n' "$(python3 -c 'print("".join(chr(33 + (i * 7) % 94) for i in range(1500)).replace("\\", "/"))')"
  printf 'trail=x  \n'
} >special.txt
# Duplicate name: mkenvimage keeps both entries; readers keep the last one
# (u-boot lib/hashtable.c himport_r, libubootenv, snapd).
printf 'b=first\na=1\nb=second\n' >dup.txt
# Entries + terminator fill the redundant data area of 0x1000 (4091 bytes)
# exactly: no padding at all with -r, one padding byte without.
python3 - <<'PY' >nearfull.txt
lines = [f"v{i:02d}=" + "x" * 90 for i in range(40)]
used = sum(len(s) + 1 for s in lines) + 1            # NULs + terminator
filler = 4091 - used - len("zz=") - 1
lines.append("zz=" + "y" * filler)
print("\n".join(lines))
PY

# ---------------------------------------------------------------- mkenvimage
# mk NAME INPUT SIZE [mkenvimage options]: make one image, then read it back
# with fw_printenv (a one-line config for a single copy, a two-line config
# for -r) so the expected vars are confirmed by the real reader.
mk() {
  local name=$1 input=$2 size=$3 cfg=$WORK/mk.cfg
  shift 3
  mkenvimage "$@" -s "$size" -o "$name.bin" "$input"
  if [[ " $* " == *" -r "* ]]; then
    cp "$name.bin" "$WORK/other.bin"
    printf '%s 0x0 %s\n%s 0x0 %s\n' "$OUT/$name.bin" "$size" "$WORK/other.bin" "$size" >"$cfg"
  else
    printf '%s 0x0 %s\n' "$OUT/$name.bin" "$size" >"$cfg"
  fi
  fw_printenv -c "$cfg" >"$WORK/$name.printenv"
  log mk "$name" "$input" "$size" "$WORK/$name.printenv" "$(json mkenvimage "$@" -s "$size" -o "$name.bin" "$input")"
}

for r in "" "-r"; do
  sfx=${r:+-r}
  for size in 0x40 0x1000; do
    mk "mk-tiny$sfx-$size" tiny.txt "$size" ${r:+"$r"}
    mk "mk-empty$sfx-$size" empty.txt "$size" ${r:+"$r"}
  done
  for size in 0x1000 0x2000 0x4000; do mk "mk-sorted$sfx-$size" sorted.txt "$size" ${r:+"$r"}; done
  for size in 0x1000 0x2000; do mk "mk-special$sfx-$size" special.txt "$size" ${r:+"$r"}; done
  mk "mk-unsorted$sfx-0x1000" unsorted.txt 0x1000 ${r:+"$r"}
  mk "mk-dup$sfx-0x1000" dup.txt 0x1000 ${r:+"$r"}
  mk "mk-nearfull$sfx-0x1000" nearfull.txt 0x1000 ${r:+"$r"}
  mk "mk-sorted$sfx-pad00-0x1000" sorted.txt 0x1000 ${r:+"$r"} -p 0x00
done

# ---------------------------------------------------------------- fw_setenv
# A sequence runs in $WORK/<seq>/ with a relative fw_env.config, so the
# config text recorded in the manifest is exactly the one used.
SZ=4096
SEQ="" STEP=0 FILES=() OFFS=()

seq_start() { # seq_start NAME files|onefile INPUT
  SEQ=$1 STEP=0
  local d=$WORK/$1
  mkdir -p "$d"
  mkenvimage -r -s "$SZ" -o "$d/init.bin" "$3"
  if [[ $2 == files ]]; then
    FILES=(envA.bin envB.bin) OFFS=(0 0)
    cp "$d/init.bin" "$d/envA.bin"
    cp "$d/init.bin" "$d/envB.bin"
  else # both copies inside one file (envspec.md §1.6: offset per line)
    FILES=(pair.bin pair.bin) OFFS=(0 "$SZ")
    cat "$d/init.bin" "$d/init.bin" >"$d/pair.bin"
  fi
  printf '%s 0x%x 0x%x\n%s 0x%x 0x%x\n' "${FILES[0]}" "${OFFS[0]}" "$SZ" "${FILES[1]}" "${OFFS[1]}" "$SZ" >"$d/fw_env.config"
  rm -f "$d/init.bin"
  snap "$(json mkenvimage -r -s "$SZ" -o init.bin "$3")"
}

# probe: which copy does libubootenv treat as current? Write a probe
# variable into a scratch clone; the copy that did not change is the active
# one. Prints 0 or 1.
probe() {
  local d=$WORK/$SEQ p=$WORK/probe i changed=()
  rm -rf "$p"
  cp -r "$d" "$p"
  (cd "$p" && fw_setenv -c fw_env.config zz_probe "$STEP")
  for i in 0 1; do
    cmp -s -i "${OFFS[i]}:${OFFS[i]}" -n "$SZ" "$d/${FILES[i]}" "$p/${FILES[i]}" || changed+=("$i")
  done
  [[ ${#changed[@]} -eq 1 ]] || { echo "gen.sh: probe write changed ${#changed[@]} copies" >&2; exit 1; }
  echo $((1 - changed[0]))
}

snap() { # snap COMMAND-JSON: snapshot both copies after a step
  local d=$WORK/$SEQ tag files active
  tag=$(printf '%s-%02d' "$SEQ" "$STEP")
  if [[ ${FILES[0]} == "${FILES[1]}" ]]; then
    cp "$d/${FILES[0]}" "$tag.bin"
    files="$tag.bin"$'\t'"$tag.bin"
  else
    cp "$d/${FILES[0]}" "$tag-a.bin"
    cp "$d/${FILES[1]}" "$tag-b.bin"
    files="$tag-a.bin"$'\t'"$tag-b.bin"
  fi
  (cd "$d" && fw_printenv -c fw_env.config) >"$WORK/$tag.printenv"
  active=$(probe) # on its own line: set -e ignores a failing $(...) inside arguments
  log snap "$SEQ" "$STEP" "$active" "$WORK/$tag.printenv" "$1" "$files" "${OFFS[0]}" "${OFFS[1]}" "$(paste -sd "|" "$d/fw_env.config")"
  STEP=$((STEP + 1))
}

step() { # step FW_SETENV-ARGS...
  (cd "$WORK/$SEQ" && fw_setenv -c fw_env.config "$@")
  snap "$(json fw_setenv -c fw_env.config "$@")"
}

step_script() { # step_script <<EOF: one `fw_setenv -s` write (not in a pipe:
  # a pipeline runs it in a subshell and STEP would not advance)
  local script
  script=$(printf '%s-%02d.script' "$SEQ" "$STEP")
  cat >"$script"
  cp "$script" "$WORK/$SEQ/"
  (cd "$WORK/$SEQ" && fw_setenv -c fw_env.config -s "$script")
  snap "$(json fw_setenv -c fw_env.config -s "$script")"
}

setbyte() { # setbyte COPY OFFSET-IN-COPY HEX: overwrite one byte of a copy
  printf '%b' "\\x$3" | dd of="$WORK/$SEQ/${FILES[$1]}" bs=1 seek=$((OFFS[$1] + $2)) conv=notrunc status=none
}

xorbyte() { # xorbyte COPY OFFSET-IN-COPY: flip bits so the byte surely changes
  local old
  old=$(od -An -tu1 -j $((OFFS[$1] + $2)) -N1 "$WORK/$SEQ/${FILES[$1]}")
  setbyte "$1" "$2" "$(printf '%02x' $((old ^ 0x5a)))"
}

# 1. Two files: add, change, unchanged (no write), delete, pairs, spaces and
#    '=', empty value via argv, script mode, long values then deleted (the
#    freed heap shows up as non-uniform padding), then a corrupted copy.
seq_start seq-files files sorted.txt
step kernel_status try
step kernel_status trying
step kernel_status trying
step kernel_status
step a 1 b 2
step note "x y=z  w"
step e ""
step_script <<'EOF'
c=3
a=
no equals sign is ignored
b=22
EOF
step big "$(printf 'L%.0s' {1..1200})"
step big2 "$(printf 'M%.0s' {1..1200})"
step big
step big2
# Spoil the last (padding) byte of the active copy; the CRC covers padding,
# so that copy goes bad and fw_printenv must read the other one although its
# flag is lower (envspec.md §1.2: only one CRC valid -> use that copy).
bad=$(probe)
xorbyte "$bad" $((SZ - 1))
snap "$(json setbyte "$bad" $((SZ - 1)) xor 0x5a)"

# 2. One file holding both copies, from an unsorted image: libubootenv
#    rewrites entries sorted.
seq_start seq-onefile onefile unsorted.txt
step snap_kernel pi-kernel_8.snap
step kernel_status try snap_try_kernel pi-kernel_9.snap
step kernel_status trying
step_script <<'EOF'
kernel_status=
snap_try_kernel=
snap_kernel=pi-kernel_9.snap
EOF
step zb_slot a

# 3. Flag wrap: start with flags 0xFE/0xFD (outside the CRC, so both copies
#    stay valid), then write until the counter passes 0xFF -> 0x00 -> 0x01.
#    Twice, with opposite parity, so that both (0x00, 0xFF) and (0xFF, 0x00)
#    pairs occur: U-Boot's env_check_redund special-cases each order.
wrap() { # wrap NAME files|onefile FLAG0 FLAG1
  seq_start "$1" "$2" tiny.txt
  setbyte 0 4 "$3"
  setbyte 1 4 "$4"
  snap "$(json setbyte 0 4 "0x$3" setbyte 1 4 "0x$4")"
  local n
  for n in 1 2 3 4 5; do step n "$n"; done
}
wrap seq-wrap files fe fd
wrap seq-wrap-onefile onefile fd fe

dpkg-query -W u-boot-tools libubootenv-tool >VERSIONS

# ---------------------------------------------------------------- manifest
python3 - "$LOG" "$OUT" <<'PY'
import json, os, sys, zlib

log_path, out = sys.argv[1], sys.argv[2]
rows = [line.rstrip("\n").split("\t") for line in open(log_path, encoding="latin-1")]

def die(msg):
    sys.exit(f"gen.sh: {msg}")

def read_input(name):
    """mkenvimage's reading of an input file (envspec.md §1.7): skip blank and
    '#' lines, split at the first '=', later duplicates win on read."""
    env = {}
    for line in open(os.path.join(out, name), encoding="latin-1").read().split("\n"):
        if line == "" or line.startswith("#"):
            continue
        k, v = line.split("=", 1)
        env[k] = v
    return env

def ordered_unique(name):
    keys = [l.split("=", 1)[0] for l in open(os.path.join(out, name), encoding="latin-1").read().split("\n") if l]
    return keys == sorted(keys, key=lambda s: s.encode("latin-1")) and len(keys) == len(set(keys))

def read_printenv(path):
    return dict(l.split("=", 1) for l in open(path, encoding="latin-1").read().split("\n") if l)

def apply_fw_setenv(env, argv):
    """libubootenv 0.3.2 fw_setenv, as measured: argv after the options is
    name/value pairs, a trailing lone name deletes, an empty argv value is
    stored as an empty value; -s lines are key=value, `key=` deletes, lines
    without '=' are ignored."""
    env = dict(env)
    args = argv[3:]
    if args[0] == "-s":
        for line in open(os.path.join(out, args[1]), encoding="latin-1").read().split("\n"):
            if "=" not in line:
                continue
            k, v = line.split("=", 1)
            if v == "":
                env.pop(k, None)
            else:
                env[k] = v
        return env
    for i in range(0, len(args), 2):
        if i + 1 < len(args):
            env[args[i]] = args[i + 1]
        else:
            env.pop(args[i], None)
    return env

def analyse(copy, redundant):
    """Independent reading of one copy: CRC, entries, padding."""
    hdr = 5 if redundant else 4
    data = copy[hdr:]
    crc_ok = zlib.crc32(data) == int.from_bytes(copy[:4], "little")
    pos, env = 0, {}
    while pos < len(data) and data[pos] != 0:
        end = data.index(0, pos)
        k, v = data[pos:end].decode("latin-1").split("=", 1)
        env[k] = v
        pos = end + 1
    pad = set(data[pos + 1:])
    return {"crc_ok": crc_ok, "vars": env, "entries_end": hdr + pos + 1,
            "observed": (pad.pop() if len(pad) == 1 else None) if pad else None,
            "uniform": len(pad) <= 1, "flag": copy[4] if redundant else None}

vectors = []
for r in rows:
    if r[0] != "mk":
        continue
    _, name, inp, size, printenv, cmd = r
    cmd = json.loads(cmd)
    redundant = "-r" in cmd
    pad = int(cmd[cmd.index("-p") + 1], 0) if "-p" in cmd else 0xFF
    blob = open(os.path.join(out, name + ".bin"), "rb").read()
    a = analyse(blob, redundant)
    env = read_input(inp)
    if not a["crc_ok"] or a["vars"] != env or read_printenv(printenv) != env:
        die(f"{name}: image, input and fw_printenv disagree")
    if a["observed"] not in (None, pad) or not a["uniform"]:
        die(f"{name}: padding is not {pad:#x}")
    vectors.append({
        "name": name, "tool": "mkenvimage", "command": " ".join(cmd),
        "size": len(blob), "redundant": redundant, "active": None,
        "copies": [{
            "file": name + ".bin", "offset": 0, "valid": True, "writer": "mkenvimage",
            "vars": env, "flag": a["flag"], "entriesEnd": a["entries_end"], "pad": pad, "observedPad": a["observed"],
            "compare": "full" if ordered_unique(inp) else "none",
        }],
    })

prev = {}
for r in rows:
    if r[0] != "snap":
        continue
    _, seq, step, active, printenv, cmd, f0, f1, o0, o1, config = r
    cmd, active, step = json.loads(cmd), int(active), int(step)
    files, offs = [f0, f1], [int(o0), int(o1)]
    copies = [open(os.path.join(out, files[i]), "rb").read()[offs[i]:offs[i] + 4096] for i in (0, 1)]
    an = [analyse(c, True) for c in copies]
    name = f"{seq}-{step:02d}"
    if cmd[0] == "mkenvimage":
        env = read_input(cmd[-1])
        st = {"vars": [env, env], "valid": [True, True], "writer": ["mkenvimage"] * 2,
              "compare": ["full" if ordered_unique(cmd[-1]) else "none"] * 2, "written": None}
    else:
        p = prev[seq]
        st = {k: list(v) if isinstance(v, list) else v for k, v in p["st"].items()}
        st["written"] = None
        changed = [i for i in (0, 1) if copies[i] != p["copies"][i]]
        if cmd[0] == "fw_setenv":
            new = apply_fw_setenv(st["vars"][p["active"]], cmd)
            if new == st["vars"][p["active"]]:
                if changed:
                    die(f"{name}: an unchanged env was written")
            else:
                w = 1 - p["active"]
                if changed != [w]:
                    die(f"{name}: expected only copy {w} to change, got {changed}")
                if an[w]["flag"] != (an[p["active"]]["flag"] + 1) & 0xFF:
                    die(f"{name}: flag {an[w]['flag']:#x} is not active + 1")
                st["vars"][w], st["valid"][w], st["written"] = new, True, w
                st["writer"][w], st["compare"][w] = "libubootenv", "full"
        elif cmd[0] == "setbyte":
            for i in changed:
                st["valid"][i] = an[i]["crc_ok"]
        else:
            die(f"{name}: unknown step {cmd[0]}")
    for i in (0, 1):
        if an[i]["crc_ok"] != st["valid"][i] or (st["valid"][i] and an[i]["vars"] != st["vars"][i]):
            die(f"{name}: copy {i} does not hold what the model expects")
    if not st["valid"][active] or read_printenv(printenv) != st["vars"][active]:
        die(f"{name}: fw_printenv and the probe disagree on the active copy")
    out_copies = []
    for i in (0, 1):
        c = {"file": files[i], "offset": offs[i], "valid": st["valid"][i], "writer": st["writer"][i]}
        if st["valid"][i]:
            libuboot = st["writer"][i] == "libubootenv"
            compare = st["compare"][i]
            if libuboot and not an[i]["uniform"]:
                compare = "entries"
            c.update({"vars": st["vars"][i], "flag": an[i]["flag"], "entriesEnd": an[i]["entries_end"],
                      "pad": "undefined" if libuboot else 0xFF,
                      "observedPad": an[i]["observed"], "compare": compare})
        out_copies.append(c)
    vectors.append({
        "name": name, "tool": cmd[0], "command": " ".join(cmd), "config": config.replace("|", "\n") + "\n",
        "size": 4096, "redundant": True, "active": active, "written": st["written"],
        "copies": out_copies,
    })
    prev[seq] = {"st": st, "copies": copies, "active": active}

# The wrap sequence must really have crossed 0xFF -> 0x00 -> 0x01.
for seq in ("seq-wrap-0", "seq-wrap-onefile-"):
    wrap = [v["copies"][v["written"]]["flag"] for v in vectors if v["name"].startswith(seq) and v["written"] is not None]
    if 0xFF not in wrap or [0xFF, 0x00, 0x01] != wrap[wrap.index(0xFF):wrap.index(0xFF) + 3]:
        die(f"{seq} flags {wrap} do not cross the wrap")

versions = dict(l.split("\t") for l in open(os.path.join(out, "VERSIONS")).read().split("\n") if l)
manifest = {
    "about": "Generated by gen.sh from the real tools; see golden.test.ts for how each field is checked.",
    "versions": versions,
    "compare": {
        "full": "encode(vars, {size, redundant}, {flag, pad: observedPad ?? pad}) equals the copy byte for byte",
        "entries": "bytes 4 .. end of the terminating NUL equal (flag and entries); bytes 0-3 (CRC) and the padding "
                   "are excluded because libubootenv pads with uninitialised heap and the CRC covers that padding",
        "none": "vars only: the tool kept a non-sorted input order (or a duplicate name), our encoder sorts",
    },
    "vectors": vectors,
}
with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
print(f"gen.sh: {len(vectors)} vectors written to {out}")
PY
