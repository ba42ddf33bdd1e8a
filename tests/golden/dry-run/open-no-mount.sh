set -e
loop=$(losetup -f --show --direct-io=on /run/e2e-backup/golden/remote/golden.luks)
cryptsetup open --key-file $KEYDIR/k "$loop" e2e-golden
blkid -p -s TYPE -o value /dev/mapper/e2e-golden || case $? in 2) ;; *) false ;; esac
fsck.ext4 -p /dev/mapper/e2e-golden || case $? in 1) ;; *) false ;; esac
