# The automount stays at /run/e2e-backup/home/browse, so assert_clean (nothing under
# /run/e2e-backup mounted) does not apply here; no device-mapper mapping is what "down" means.
BROWSE = "/run/e2e-backup/home/browse"
prepare(client, "client")
make_data(client, "E2E-BROWSE")
client.succeed("systemctl start e2e-backup@home.service")
client.fail("dmsetup ls | grep -F e2e-")

with subtest("the first access to browse/ mounts the snapshots read-only, stack and all"):
    client.succeed("systemctl is-active 'run-e2e\\x2dbackup-home-browse.automount'")
    snaps = client.succeed(f"ls {BROWSE}").split()
    assert len(snaps) == 1, f"want 1 snapshot, have {snaps}"
    client.succeed(f"diff -r --no-dereference /data {BROWSE}/{snaps[0]}/data")
    client.fail(f"touch {BROWSE}/{snaps[0]}/data/new")
    client.succeed("systemctl is-active e2e-open@home.service")

with subtest("a backup while browsing shares the stack and leaves it open"):
    client.succeed("echo more > /data/more", "systemctl start e2e-backup@home.service")
    snaps = client.succeed(f"ls {BROWSE}").split()
    assert len(snaps) == 2, f"want 2 snapshots, have {snaps}"
    client.succeed("systemctl is-active e2e-open@home.service")

with subtest("once the browse mount is gone the stack unwinds"):
    client.succeed("systemctl stop 'run-e2e\\x2dbackup-home-browse.mount'")
    client.wait_until_succeeds("! systemctl is-active e2e-open@home.service 'run-e2e\\x2dbackup-home-remote.mount'", timeout=120)
    client.fail("dmsetup ls | grep -F e2e-")
