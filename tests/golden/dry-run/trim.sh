set -e
install -d -m 0700 /run/e2e-backup/golden /run/e2e-backup/golden/remote /run/e2e-backup/golden/fs
ssh -F /dev/null -a -x -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/e2e-backup/known_hosts -o GlobalKnownHostsFile=/dev/null -o IdentityFile=/etc/e2e-backup/id_ed25519 -o IdentitiesOnly=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o Port=22 alice@backup.example.org 'stat -c '\''%b %B'\'' -- /srv/backup/alice/golden.luks'
modprobe nbd
ssh -F /dev/null -a -x -o BatchMode=yes -o ConnectTimeout=15 -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/e2e-backup/known_hosts -o GlobalKnownHostsFile=/dev/null -o IdentityFile=/etc/e2e-backup/id_ed25519 -o IdentitiesOnly=yes -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o Port=22 -f -N -o ExitOnForwardFailure=yes -o ControlMaster=yes -o StreamLocalBindUnlink=yes -o ControlPath=/run/e2e-backup/golden/ssh.ctl -L /run/e2e-backup/golden/nbd.sock:127.0.0.1:10809 alice@backup.example.org
nbd-client -unix /run/e2e-backup/golden/nbd.sock /dev/nbd0 -N golden.luks
cryptsetup isLuks /dev/nbd0
cryptsetup open --key-file $KEYDIR/k --allow-discards /dev/nbd0 e2e-golden
blkid -p -s TYPE -o value /dev/mapper/e2e-golden || case $? in 2) ;; *) false ;; esac
fsck.ext4 -p /dev/mapper/e2e-golden || case $? in 1) ;; *) false ;; esac
mount -t ext4 -o rw,nosuid,nodev,noinit_itable,errors=remount-ro,data_err=abort /dev/mapper/e2e-golden /run/e2e-backup/golden/fs
fstrim -v /run/e2e-backup/golden/fs
umount /run/e2e-backup/golden/fs
cryptsetup close e2e-golden
nbd-client -d /dev/nbd0
rm -f /run/e2e-backup/golden/nbd.sock
ssh -o ControlPath=/run/e2e-backup/golden/ssh.ctl -O exit alice@backup.example.org
