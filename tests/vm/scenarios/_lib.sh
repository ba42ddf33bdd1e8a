# Sourced by the e2e-backup scenarios (not a scenario itself: not executable).
# Needs the guest environment of tests/vm/guest/boot: SERVER_HOST, SERVER_USER, SERVER_STORE,
# SERVER_KEY, SERVER_KNOWN_HOSTS, and the on-server / link helpers.
set -euo pipefail
export E2E_BACKUP_TEST_PBKDF=1   # test-only cheap PBKDF (Argon2 under TCG takes minutes)

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# new_job JOB [DIR]: key, job file and server directory DIR (default JOB); container DIR.luks.
new_job() {
  local job=$1 dir=${2:-$1}
  install -d -m 0700 /etc/e2e-backup
  if [ ! -f "/etc/e2e-backup/$dir.key" ]; then
    head -c 64 /dev/urandom >"/etc/e2e-backup/$dir.key"
    chmod 600 "/etc/e2e-backup/$dir.key"
  fi
  on-server install -d -m 0700 -o "$SERVER_USER" -g "$SERVER_USER" "$SERVER_STORE/$dir"
  cat >"/etc/e2e-backup/$job.toml" <<EOF
[remote]
host = "$SERVER_HOST"
user = "$SERVER_USER"
path = "$SERVER_STORE/$dir"
identity_file = "$SERVER_KEY"
known_hosts = "$SERVER_KNOWN_HOSTS"

[container]
file = "$dir.luks"
size = "256M"
key_file = "/etc/e2e-backup/$dir.key"

[sync]
paths = ["/data/$job"]
EOF
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
}

server_file() { echo "$SERVER_STORE/$1/$1.luks"; }
server_sum() { on-server md5sum "$(server_file "$1")" | cut -d' ' -f1; }
server_alloc() { on-server stat -c '%b %B' "$(server_file "$1")" | awk '{print $1 * $2}'; }

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
