# Sourced by the bench scripts that run inside the VM guest (not a scenario itself: not executable).
# Needs the guest environment of tests/vm/guest/boot and tests/vm/scenarios/_lib.sh sourced first.
export LC_ALL=C

# bench_results NAME: where put() writes. The run directory's out/ survives a run killed by
# VM_TIMEOUT (tests/vm/run keeps it), so every figure is written the moment it is measured.
bench_results() {
  res=/mnt/vm/out/$1.results
  [ -w /mnt/vm/out ] || res=/root/$1.results
  : >"$res"
}
put() { echo "$*" >>"$res"; }
say() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
now_us() { echo "${EPOCHREALTIME/./}"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# wire: rx + tx bytes of the server's veth (/proc/net/dev read in the server's network namespace;
# /sys/class/net there would still show the client's devices).
# printf, not print: mawk prints a sum beyond 2^31 as 2.18556e+09.
wire() { on-server cat /proc/net/dev | awk 'sub(/^ *veth-s:/, "") { split($0, f, " "); printf "%.0f\n", f[1] + f[9] }'; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# smalltree DIR DIRS FILES SIZE|cycle: DIRS directories of FILES random files each (one head + one
# split per directory: no process per file). cycle: directory k holds files of 512·(1 + k mod 8) B.
smalltree() {
  local k d sz
  for ((k = 0; k < $2; k++)); do
    printf -v d '%s/d%03d' "$1" "$k"
    mkdir -p "$d"
    if [ "$4" = cycle ]; then sz=$((512 * (1 + k % 8))); else sz=$4; fi
    head -c $((sz * $3)) /dev/urandom | split -b "$sz" -a 4 -d - "$d/f"
  done
}

# manifest DIR OUT: the checksum manifest e2e-sync writes for every snapshot (the command of
# src/snapshots.rs checksum_cmd): it reads every file of the snapshot back through the stack.
manifest() {
  (cd "$1" && find . -type f -print0 | sort -z | xargs -0r sha256sum --zero >"$2")
}
