# Prelude of every e2e-backup NixOS test (after PRIVKEY and CLIENTS, set by lib.nix).
# Helpers use only the driver's Machine API. Where one does what a helper of the VM suite's
# tests/vm/scenarios/_lib.sh does, it has that name (make_data, assert_clean, server_file,
# server_alloc); prepare, backup and restore_and_compare have no twin there (the NixOS module
# writes the job file and runs the units, which the VM scenarios do by hand).


def prepare(client, name):
    """Key, SSH identity and the pinned server host key for the client's job "home"."""
    client.succeed(
        "install -d -m 0700 /etc/e2e-backup",
        f"install -m 0600 {PRIVKEY} /etc/e2e-backup/id",
        "head -c 64 /dev/urandom > /etc/e2e-backup/home.key",
        "chmod 600 /etc/e2e-backup/home.key",
    )
    host_key = " ".join(server.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2])
    client.succeed(f"echo 'server {host_key}' > /etc/e2e-backup/known_hosts")


def make_data(client, marker, mib=8):
    client.succeed(
        "mkdir -p /data/sub",
        f"for i in $(seq 1 50); do echo '{marker} file '$i > /data/sub/f$i; done",
        "ln /data/sub/f1 /data/hard",
        "ln -s sub/f2 /data/sym",
        f"head -c {mib}M /dev/urandom > /data/big.bin",
    )


def assert_clean(client):
    """Nothing of ours mounted, mapped or attached, and no lease keeper running."""
    client.fail("findmnt -rn -o TARGET | grep -F /run/e2e-backup")
    client.fail("dmsetup ls | grep -F e2e-")
    client.succeed("test -z \"$(losetup -a)\"")
    client.fail("pgrep -f -- --keep-lease")


def backup(client):
    client.succeed("systemctl start e2e-backup@home.service")
    assert_clean(client)


def server_file(name):
    return f"/srv/e2e-backup/{name}/data/{name}-home.luks"


def server_alloc(name):
    return int(server.succeed(f"stat -c '%b' {server_file(name)}").strip()) * 512


def restore_and_compare(client):
    client.succeed(
        "rm -rf /tmp/restore",
        "e2e-sync --restore latest/data/ /tmp/restore home",
        "diff -r --no-dereference /data /tmp/restore",
        "test $(stat -c %h /tmp/restore/hard) = 2",
    )
    assert_clean(client)


start_all()
server.wait_for_unit("sshd.service")
for m in machines:
    m.wait_for_unit("multi-user.target")
