prepare(client, "client")
make_data(client, "failing")

with subtest("a wrong pinned host key fails the run cleanly"):
    client.succeed("cp /etc/e2e-backup/known_hosts /tmp/good_known_hosts")
    client.succeed("ssh-keygen -q -t ed25519 -N '' -f /tmp/other")
    client.succeed("echo \"server $(cut -d' ' -f1,2 /tmp/other.pub)\" > /etc/e2e-backup/known_hosts")
    client.fail("systemctl start e2e-backup@home.service")
    # The remote's mount unit fails (ssh's own words in its journal); no layer runs.
    client.succeed("systemctl is-failed --quiet 'run-e2e\\x2dbackup-home-remote.mount'")
    client.succeed("journalctl -u 'run-e2e\\x2dbackup-home-remote.mount' | grep -i 'host key'")
    # Failure where users look: the unit the timer starts ends failed, the line (from e2e-close's
    # probe of the server) at priority err.
    client.succeed("systemctl is-failed --quiet e2e-backup@home.service")
    client.succeed("journalctl -p err -u e2e-backup@home.service | grep -i 'host key'")
    client.succeed("(systemctl status --no-pager -n 20 e2e-backup@home.service || true) >/tmp/st; grep -i 'host key' /tmp/st")
    assert_clean(client)
    state = client.succeed("systemctl show -p ActiveState --value e2e-open@home.service").strip()
    assert state in ("inactive", "failed"), state

with subtest("the server file is untouched: nothing was created"):
    server.fail(f"test -e {server_file('client')}")

with subtest("with the right key the next run succeeds"):
    client.succeed("cp /tmp/good_known_hosts /etc/e2e-backup/known_hosts")
    backup(client)
    restore_and_compare(client)
