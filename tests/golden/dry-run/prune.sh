set -e
# a real run first checks that the mounted remote answers, and tears the stack down if not
# remove STAMP no rule keeps it
# keep 2026-11-29T01:00:00Z within 1d
# keep 2026-11-30T01:00:00Z last 1, within 1d
mv -T /run/e2e-backup/golden/fs/snapshots/STAMP /run/e2e-backup/golden/fs/snapshots/STAMP.prune
rm -rf /run/e2e-backup/golden/fs/snapshots/STAMP.prune
rm -f /run/e2e-backup/golden/fs/manifests/STAMP.sha256
rm -f /run/e2e-backup/golden/fs/manifests/STAMP.incomplete
sync -f /run/e2e-backup/golden/fs
