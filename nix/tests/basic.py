marker = "E2E-NIXOS-PLAINTEXT-MARKER"
prepare(client, "client")
make_data(client, marker)

with subtest("systemctl start e2e-backup@home makes a snapshot and unwinds the stack"):
    backup(client)
    snaps = client.succeed("e2e-sync --list home").split()
    assert len(snaps) == 1, f"want 1 snapshot, have {snaps}"

with subtest("the server holds ciphertext only, and only the container"):
    files = server.succeed("find /srv/e2e-backup/client/data -mindepth 1").split()
    assert files == [server_file("client")], f"unexpected files on the server: {files}"
    server.succeed(f"test $(grep -c -F {marker} {server_file('client')} || true) = 0")
    server.succeed(f"cryptsetup isLuks {server_file('client')}")

with subtest("restore equals the source"):
    restore_and_compare(client)

with subtest("a second run hard-links unchanged files"):
    backup(client)
    client.succeed("e2e-open home")
    client.succeed("test $(stat -c %h /run/e2e-backup/home/fs/latest/data/sub/f3) = 2")
    client.succeed("e2e-close home")
    assert_clean(client)

with subtest("the client account can do nothing but SFTP in its own directory"):
    client.fail("ssh -i /etc/e2e-backup/id -o UserKnownHostsFile=/etc/e2e-backup/known_hosts e2e-client@server cat /etc/passwd | grep root")
