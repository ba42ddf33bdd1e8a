set -e
# a real run first checks that the mounted remote answers, and tears the stack down if not
install -d -m 0700 /run/e2e-backup/golden/fs/snapshots /run/e2e-backup/golden/fs/logs /run/e2e-backup/golden/fs/manifests
rsync -aHAX --numeric-ids --delete --delete-excluded --relative --sparse --modify-window=-1 --exclude=/run/e2e-backup/ --dry-run --itemize-changes --timeout=600 /home /run/e2e-backup/golden/fs/snapshots/2026-11-30T01:00:00Z/
# skip_unchanged: a run that finds no difference above stops here, recording itself beside the latest snapshot
rsync -aHAX --numeric-ids --delete --delete-excluded --relative --sparse --modify-window=-1 --exclude=/run/e2e-backup/ --info=progress2 --stats --timeout=600 --log-file=/run/e2e-backup/golden/fs/logs/STAMP.log --link-dest=../2026-11-30T01:00:00Z /home /run/e2e-backup/golden/fs/snapshots/STAMP.inflight/ || case $? in 24) ;; *) false ;; esac
# a real run hashes only the files rsync wrote; here, every file
sh -c 'cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum --zero >"$2"' e2e-checksum /run/e2e-backup/golden/fs/snapshots/STAMP.inflight /run/e2e-backup/golden/fs/manifests/STAMP.sha256.tmp
mv -T /run/e2e-backup/golden/fs/manifests/STAMP.sha256.tmp /run/e2e-backup/golden/fs/manifests/STAMP.sha256
# publish order: flush data and manifest before anything points at them
sync -f /run/e2e-backup/golden/fs
mv -T /run/e2e-backup/golden/fs/snapshots/STAMP.inflight /run/e2e-backup/golden/fs/snapshots/STAMP
ln -sfn snapshots/STAMP /run/e2e-backup/golden/fs/latest.tmp
mv -T /run/e2e-backup/golden/fs/latest.tmp /run/e2e-backup/golden/fs/latest
sync -f /run/e2e-backup/golden/fs
