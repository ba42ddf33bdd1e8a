set -e
install -d -m 0700 /run/e2e-backup/golden /run/e2e-backup/golden/remote /run/e2e-backup/golden/fs
sshfs alice@backup.example.org:/srv/backup/alice /run/e2e-backup/golden/remote -o allow_other -o 'ssh_command=ssh -F /dev/null' -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/e2e-backup/known_hosts -o GlobalKnownHostsFile=/dev/null -o IdentityFile=/etc/e2e-backup/id_ed25519 -o IdentitiesOnly=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o Port=22
loop=$(losetup -f --show --direct-io=on -r /run/e2e-backup/golden/remote/golden.luks)
cryptsetup open --key-file $KEYDIR/k --readonly "$loop" e2e-golden
blkid -p -s TYPE -o value /dev/mapper/e2e-golden || case $? in 2) ;; *) false ;; esac
dumpe2fs -h /dev/mapper/e2e-golden
# a real run mounts through a local copy-on-write overlay if the journal needs recovery
mount -t ext4 -o ro,nosuid,nodev,noinit_itable /dev/mapper/e2e-golden /run/e2e-backup/golden/fs
# the container is not open yet: the snapshots and the verdicts are not shown
umount /run/e2e-backup/golden/fs
cryptsetup close e2e-golden
losetup -d "$loop"
fusermount3 -u /run/e2e-backup/golden/remote
