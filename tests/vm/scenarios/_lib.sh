# Sourced by the e2e-backup scenarios (not a scenario itself: not executable).
# Needs the guest environment of tests/vm/guest/boot: SERVER_HOST, SERVER_USER, SERVER_STORE,
# SERVER_KEY, SERVER_KNOWN_HOSTS, and the on-server / link helpers.
set -euo pipefail
export E2E_BACKUP_TEST_PBKDF=1   # test-only cheap PBKDF (Argon2 under TCG takes minutes)
touch /run/e2e-backup-test-only-weak-pbkdf   # ... which the variable alone does not enable

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# new_job JOB [DIR] [SECTION.KEY=VALUE...]: key, job file and server directory DIR (default JOB);
# container DIR.luks. Each SECTION.KEY=VALUE sets a key of the job file to VALUE, a TOML value
# (container.size='"512M"', sync.rsync_args='["--bwlimit=256"]'); an empty VALUE leaves the key out.
# The one way scenarios write job files: called again for the same JOB, it rewrites the file.
new_job() {
  local job=$1 dir=$1 kv k s
  shift
  if [ $# -gt 0 ] && [[ $1 != *=* ]]; then dir=$1; shift; fi
  install -d -m 0700 /etc/e2e-backup
  if [ ! -f "/etc/e2e-backup/$dir.key" ]; then
    head -c 64 /dev/urandom >"/etc/e2e-backup/$dir.key"
    chmod 600 "/etc/e2e-backup/$dir.key"
  fi
  on-server install -d -m 0700 -o "$SERVER_USER" -g "$SERVER_USER" "$SERVER_STORE/$dir"
  local -A v=(
    [remote.host]="\"$SERVER_HOST\"" [remote.user]="\"$SERVER_USER\""
    [remote.path]="\"$SERVER_STORE/$dir\"" [remote.identity_file]="\"$SERVER_KEY\""
    [remote.known_hosts]="\"$SERVER_KNOWN_HOSTS\""
    [container.file]="\"$dir.luks\"" [container.size]='"256M"'
    [container.key_file]="\"/etc/e2e-backup/$dir.key\""
    [sync.paths]="[\"/data/$job\"]"
  )
  local order=(remote.host remote.user remote.path remote.identity_file remote.known_hosts
    container.file container.size container.key_file sync.paths)
  # E2E_FS=btrfs: the scenario runs its jobs on the btrfs engine (a wrapper scenario sets it).
  if [ "${E2E_FS:-ext4}" != ext4 ]; then v[container.filesystem]="\"$E2E_FS\""; order+=(container.filesystem); fi
  for kv; do
    k=${kv%%=*}
    [[ $k == *.* && $kv == *=* ]] || fail "new_job $job: $kv is not SECTION.KEY=VALUE"
    [[ -v v[$k] ]] || order+=("$k")
    v[$k]=${kv#*=}
  done
  {
    for s in remote container sync retention browse; do
      local head="[$s]"
      for k in "${order[@]}"; do
        [[ $k == "$s".* && -n ${v[$k]} ]] || continue
        if [ -n "$head" ]; then
          [ "$s" = remote ] || echo
          echo "$head"
          head=
        fi
        echo "${k#*.} = ${v[$k]}"
      done
    done
  } >"/etc/e2e-backup/$job.toml"
}

# make_data JOB MARKER: a small tree with hard links, a symlink, an xattr, an ACL, odd owners.
make_data() {
  local d=/data/$1 i
  mkdir -p "$d/sub"
  for i in $(seq 1 40); do printf '%s file %d\n' "$2" "$i" >"$d/sub/f$i"; done
  ln "$d/sub/f1" "$d/hard"
  ln -s sub/f2 "$d/sym"
  setfattr -n user.e2e -v yes "$d/sub/f3"
  setfacl -m "u:$SERVER_USER:r" "$d/sub/f4"
  chown 1234:5678 "$d/sub/f5"
}

# same_tree A B: rsync sees no difference (content, links, attributes, ACLs, xattrs).
same_tree() {
  local diff
  diff=$(rsync -aHAXn --numeric-ids --itemize-changes --delete "$1/" "$2/")
  [ -z "$diff" ] || fail "trees differ: $1 vs $2:
$diff"
}

# assert_clean: nothing of ours mounted, mapped or attached.
assert_clean() {
  if grep -q ' /run/e2e-backup/' /proc/mounts; then fail "still mounted: $(grep ' /run/e2e-backup/' /proc/mounts)"; fi
  if ls /dev/mapper/e2e-* >/dev/null 2>&1; then fail "still mapped: $(ls /dev/mapper/e2e-*)"; fi
  if [ -n "$(losetup -a)" ]; then fail "loop still attached: $(losetup -a)"; fi
  if pgrep -f -- '--keep-lease' >/dev/null; then fail "a lease keeper still runs: $(pgrep -af -- '--keep-lease')"; fi
}

server_file() { echo "$SERVER_STORE/$1/$1.luks"; }
server_sum() { on-server md5sum "$(server_file "$1")" | cut -d' ' -f1; }
server_alloc() { on-server stat -c '%b %B' "$(server_file "$1")" | awk '{print $1 * $2}'; }

# serve_nbd FILE: the server side of e2e-trim as its --help documents it: qemu-nbd as the backup
# user, the export named after the file, TRIM -> hole punch, on the loopback only.
serve_nbd() {
  on-server setpriv --reuid="$SERVER_USER" --regid="$SERVER_USER" --init-groups \
    qemu-nbd --fork --persistent --bind 127.0.0.1 --port 10809 --format raw --discard=unmap \
    --export-name "$(basename "$1")" "$1"
  sleep 1
}

# run_stock_recipe DIR FILE KEY FROM TO: the "If the tools are gone" recipe of e2e-backup(7),
# taken literally from the page and run as root with the scenario's SSH identity; the server
# directory DIR, the container FILE in it, the key file KEY, and a restore of the snapshot path
# FROM into TO put in for the page's placeholders.
run_stock_recipe() {
  local recipe rc=0
  recipe=$(sed -n '/If the tools are gone/,/^\.fi/p' "$E2E_VM_SRC/man/e2e-backup.7" | sed -n '/^\.nf/,/^\.fi/p' \
    | sed -e '1d;$d' -e 's/\\-/-/g')
  [ "$(grep -c . <<<"$recipe")" -ge 15 ] || fail "recipe not found in the man page: $recipe"
  recipe=$(sed -e "s|user@backup.example.org:/srv/backup/alice|$SERVER_USER@$SERVER_HOST:$1|" \
    -e "s|home\.luks|$2|" -e "s|home\.key|$3|" -e "s|/mnt/backup/latest/home/ /home/|$4 $5|" <<<"$recipe")
  mkdir -p /root/.ssh "$5"
  printf 'Host %s\n  IdentityFile %s\n  UserKnownHostsFile %s\n  BatchMode yes\n' \
    "$SERVER_HOST" "$SERVER_KEY" "$SERVER_KNOWN_HOSTS" >/root/.ssh/config
  bash -e <<<"$recipe" >/root/recipe.out 2>&1 || rc=$?
  rm -f /root/.ssh/config
  [ "$rc" = 0 ] || { cat /root/recipe.out >&2; fail "the stock-tools recipe failed"; }
}

# expect CODE TEXT CMD...: CMD exits CODE and prints exactly one "error:" line containing TEXT.
expect() {
  local code=$1 text=$2 rc=0 err
  shift 2
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  [ "$rc" = "$code" ] || fail "$* exited $rc, want $code; stderr:
$err"
  local lines
  lines=$(grep -c ': error: ' <<<"$err" || true)
  [ "$lines" = 1 ] || fail "$* printed $lines error lines, want 1:
$err"
  grep -q -F -- "$text" <<<"$err" || fail "$*: error does not mention '$text':
$err"
  ok "$* → exit $code: $(grep ': error: ' <<<"$err")"
}

# check_job JOB SUMS: open JOB read-only; every snapshot with an md5 list in SUMS/JOB (recorded when it
# was first seen) must still match it, else `lost` += 1; record lists for snapshots not seen before;
# a leftover .inflight/.prune or a `latest` not naming a completed snapshot → `inflight_taken` += 1;
# `latest` must equal the source /data/JOB; after the unmount the filesystem's check (fs_check) unclean → `dirty` += 1.
# (The fault scenarios' counters; they start at 0 there.)
check_job() {
  local j=$1 sums=$2 fs=/run/e2e-backup/$1/fs s lat d
  e2e-open --read-only "$j" >/dev/null || { echo "read-only open of $j failed" >&2; lost=$((lost + 1)); e2e-close "$j"; return; }
  mkdir -p "$sums/$j"
  # With check_keep_last=N (retention keep_last = N): a recorded snapshot older than the N newest
  # present ones was pruned, not lost; its record goes.
  if [ "${check_keep_last:-0}" -gt 0 ]; then
    local floor
    floor=$(ls "$fs/snapshots" | grep -E '^[0-9-]+T[0-9:]+Z$' | sort | tail -n "$check_keep_last" | head -n1)
    for s in "$sums/$j"/*; do
      [ -f "$s" ] && [ ! -d "$fs/snapshots/${s##*/}" ] && [[ ${s##*/} < $floor ]] && rm -f "$s"
    done
  fi
  for s in "$sums/$j"/*; do
    [ -f "$s" ] || continue
    if ! (cd "$fs/snapshots/${s##*/}" 2>/dev/null && find . -type f -exec md5sum {} + | sort -k2 | cmp -s - "$s"); then
      echo "LOST: snapshot ${s##*/} of $j changed or missing" >&2; lost=$((lost + 1))
    fi
  done
  for s in "$fs"/snapshots/*; do
    case ${s##*/} in
      *.inflight|*.prune) echo "leftover ${s##*/} after a successful run" >&2; inflight_taken=$((inflight_taken + 1)); continue ;;
    esac
    [ -f "$sums/$j/${s##*/}" ] || (cd "$s" && find . -type f -exec md5sum {} + | sort -k2) >"$sums/$j/${s##*/}"
  done
  # The newest snapshot holds the source as it is now (the run just made it).
  if [ -d "$fs/latest/data/$j" ]; then
    d=$(rsync -rlcn --itemize-changes --delete "/data/$j/" "$fs/latest/data/$j/" 2>&1) || d="rsync failed: $d"
    [ -z "$d" ] || { echo "latest of $j differs from the source: $d" >&2; lost=$((lost + 1)); }
  fi
  # With check_verify=1: `latest` must verify against a non-empty manifest (counter `unverified`).
  if [ "${check_verify:-0}" = 1 ]; then
    if ! e2e-sync --verify "$j" >/dev/null 2>/root/verify.err; then
      echo "latest of $j does not verify: $(tail -n 3 /root/verify.err)" >&2; unverified=$((unverified + 1))
    elif grep -q '^verified .*: 0 files' /root/verify.err; then
      echo "latest of $j verified against an empty manifest" >&2; unverified=$((unverified + 1))
    fi
  fi
  lat=$(readlink "$fs/latest" || true)
  [[ $lat =~ ^snapshots/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$ ]] && [ -d "$fs/$lat" ] \
    || { echo "latest -> $lat is not a completed snapshot" >&2; inflight_taken=$((inflight_taken + 1)); }
  umount "$fs"
  if ! fs_check "/dev/mapper/e2e-$j" >/root/fsck.out 2>&1; then
    echo "filesystem check of $j not clean:" >&2; tail -n 20 /root/fsck.out >&2; dirty=$((dirty + 1))
  fi
  e2e-close "$j"
}

# fs_check DEV: the filesystem's own read-only check of an unmounted container mapping, by what it
# holds (e2fsck -fn; btrfs check --readonly).
fs_check() {
  case $(blkid -p -s TYPE -o value "$1") in
    btrfs) btrfs check --readonly "$1" ;;
    *) e2fsck -fn "$1" ;;
  esac
}

# wait_inflight JOB MIB PID: until MIB MiB are in JOB's .inflight snapshot (at most 120 s, or PID
# ends). The btrfs engine has no .inflight (rsync writes into current/ in place): there, until
# rsync has written MIB MiB (its processes' write_bytes, counted when a page is dirtied).
wait_inflight() {
  local j=$1 n=$2 pid=$3 t0=$SECONDS b
  while [ $((SECONDS - t0)) -lt 120 ] && kill -0 "$pid" 2>/dev/null; do
    if [ -d "/run/e2e-backup/$j/fs/current" ]; then
      b=$(for r in $(pgrep -x rsync); do cat "/proc/$r/io" 2>/dev/null; done | awk '$1 == "write_bytes:" {s += $2} END {print int(s / 1048576)}')
    else
      b=$( (du -sm /run/e2e-backup/"$j"/fs/snapshots/*.inflight 2>/dev/null || true) | awk '{s += $1} END {print s + 0}')
    fi
    [ "$b" -ge "$n" ] && return
    sleep 0.3
  done
}
