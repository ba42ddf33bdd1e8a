for c, n in ((client, "client"), (client2, "client2")):
    prepare(c, n)
    make_data(c, f"marker-of-{n}")

with subtest("both clients back up to the same server, each into its own directory"):
    backup(client)
    backup(client2)
    server.succeed(f"test -f {server_file('client')}", f"test -f {server_file('client2')}")
    server.succeed("test $(stat -c %U /srv/e2e-backup/client/data) = e2e-client")
    server.succeed("test $(stat -c %U /srv/e2e-backup/client2/data) = e2e-client2")

with subtest("a client sees only its own chroot"):
    out = client.succeed(
        "echo 'ls /' | sftp -b - -i /etc/e2e-backup/id -o UserKnownHostsFile=/etc/e2e-backup/known_hosts e2e-client@server"
    )
    assert "client2" not in out, out
    client.fail(
        "echo 'get /../client2/data/client2-home.luks /tmp/x' | sftp -b - -i /etc/e2e-backup/id -o UserKnownHostsFile=/etc/e2e-backup/known_hosts e2e-client@server"
    )

with subtest("each restores its own data"):
    restore_and_compare(client)
    restore_and_compare(client2)
    client.succeed("grep -q marker-of-client /tmp/restore/sub/f1")
    client2.succeed("grep -q marker-of-client2 /tmp/restore/sub/f1")
