set -e
install -d -m 0700 $KEYDIR/etc
ssh-keyscan -T 15 -t ed25519 -p 22 backup.example.org
# a real run shows the fingerprint and pins the key only once it is confirmed
sh -c 'set -C && umask 077 && head -c 64 /dev/urandom >"$1"' e2e-key $KEYDIR/etc/golden.key
ssh-keygen -q -t ed25519 -N '' -C 'e2e-backup golden' -f $KEYDIR/etc/golden.id_ed25519
sh -c 'set -C && umask 077 && printf %s "$2" >"$1"' e2e-write $KEYDIR/etc/golden.toml '# Written by e2e-setup; see e2e-backup.toml(5).

[remote]
host = "backup.example.org"
user = "alice"
path = "/srv/backup/alice"
identity_file = "$KEYDIR/etc/golden.id_ed25519"
known_hosts = "$KEYDIR/etc/golden.known_hosts"

[container]
file = "golden.luks"
size = "1G"
key_file = "$KEYDIR/etc/golden.key"

[sync]
paths = ["/home"]

[retention]
keep_daily = 7
keep_weekly = 4
keep_monthly = 6
'
ssh-keygen -y -f $KEYDIR/etc/golden.id_ed25519
# On the server backup.example.org, as root (an SFTP-only account; "Server side" in e2e-backup(7) confines it further with ChrootDirectory):
# 
#     useradd --system --create-home --shell /usr/sbin/nologin alice
#     install -d -m 0700 -o alice -g alice /srv/backup/alice
#     install -d -m 0700 -o alice -g alice ~alice/.ssh
#     echo 'restrict,port-forwarding,permitopen="127.0.0.1:10809" <the line in $KEYDIR/etc/golden.id_ed25519.pub>' >>~alice/.ssh/authorized_keys
# 
#   and in /etc/ssh/sshd_config (then: systemctl reload ssh):
# 
#     Match User alice
#       ForceCommand internal-sftp -p open,close,read,write,lstat,fstat,setstat,fsetstat,opendir,readdir,remove,mkdir,realpath,stat,rename,posix-rename,statvfs,fsync
#       ClientAliveInterval 15
#       ClientAliveCountMax 4
#       AllowTcpForwarding local
#       PermitOpen 127.0.0.1:10809
#       PermitTTY no
#       X11Forwarding no
# 
# Then the first backup (it creates the container): e2e-sync --create golden
# and every night after: systemctl daemon-reload && systemctl enable --now e2e-backup@golden.timer
# (daemon-reload: e2e-backup-generator writes the job's mount units from the new job file)
