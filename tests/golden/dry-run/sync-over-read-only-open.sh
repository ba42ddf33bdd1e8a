set -e
# a real run first checks that the mounted remote answers, and tears the stack down if not
umount /run/e2e-backup/golden/fs
cryptsetup close e2e-golden
losetup -d /dev/loop0
fusermount3 -u /run/e2e-backup/golden/remote
sshfs alice@backup.example.org:/srv/backup/alice /run/e2e-backup/golden/remote -o allow_other -o 'ssh_command=ssh -F /dev/null' -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/e2e-backup/known_hosts -o GlobalKnownHostsFile=/dev/null -o IdentityFile=/etc/e2e-backup/id_ed25519 -o IdentitiesOnly=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o Port=22
loop=$(losetup -f --show --direct-io=on /run/e2e-backup/golden/remote/golden.luks)
cryptsetup open --key-file $KEYDIR/k "$loop" e2e-golden
blkid -p -s TYPE -o value /dev/mapper/e2e-golden || case $? in 2) ;; *) false ;; esac
fsck.ext4 -p /dev/mapper/e2e-golden || case $? in 1) ;; *) false ;; esac
mount -t ext4 -o rw,nosuid,nodev,noinit_itable,errors=remount-ro,data_err=abort /dev/mapper/e2e-golden /run/e2e-backup/golden/fs
install -d -m 0700 /run/e2e-backup/golden/fs/snapshots /run/e2e-backup/golden/fs/logs /run/e2e-backup/golden/fs/manifests
# the container is not open yet, so no --link-dest and no pruning are shown
rsync -aHAX --numeric-ids --delete --delete-excluded --relative --sparse --modify-window=-1 --exclude=/run/e2e-backup/ --info=progress2 --stats --timeout=600 --log-file=/run/e2e-backup/golden/fs/logs/STAMP.log /home /run/e2e-backup/golden/fs/snapshots/STAMP.inflight/ || case $? in 24) ;; *) false ;; esac
# a real run hashes only the files rsync wrote; here, every file
sh -c 'cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum --zero >"$2"' e2e-checksum /run/e2e-backup/golden/fs/snapshots/STAMP.inflight /run/e2e-backup/golden/fs/manifests/STAMP.sha256.tmp
mv -T /run/e2e-backup/golden/fs/manifests/STAMP.sha256.tmp /run/e2e-backup/golden/fs/manifests/STAMP.sha256
# publish order: flush data and manifest before anything points at them
sync -f /run/e2e-backup/golden/fs
mv -T /run/e2e-backup/golden/fs/snapshots/STAMP.inflight /run/e2e-backup/golden/fs/snapshots/STAMP
ln -sfn snapshots/STAMP /run/e2e-backup/golden/fs/latest.tmp
mv -T /run/e2e-backup/golden/fs/latest.tmp /run/e2e-backup/golden/fs/latest
sync -f /run/e2e-backup/golden/fs
umount /run/e2e-backup/golden/fs
cryptsetup close e2e-golden
losetup -d "$loop"
fusermount3 -u /run/e2e-backup/golden/remote
