set -e
# a real run first checks that the mounted remote answers, and tears the stack down if not
# remove 2026-11-28T01:00:00Z no rule keeps it
# keep 2026-11-29T01:00:00Z within 1d
# keep 2026-11-30T01:00:00Z last 1, within 1d
mv -T /run/e2e-backup/golden/fs/snapshots/2026-11-28T01:00:00Z /run/e2e-backup/golden/fs/snapshots/2026-11-28T01:00:00Z.prune
rm -rf /run/e2e-backup/golden/fs/snapshots/2026-11-28T01:00:00Z.prune
rm -f /run/e2e-backup/golden/fs/manifests/2026-11-28T01:00:00Z.sha256
rm -f /run/e2e-backup/golden/fs/manifests/2026-11-28T01:00:00Z.incomplete
rm -f /run/e2e-backup/golden/fs/manifests/2026-11-28T01:00:00Z.unchanged.tmp
rm -f /run/e2e-backup/golden/fs/manifests/2026-11-28T01:00:00Z.unchanged
sync -f /run/e2e-backup/golden/fs
