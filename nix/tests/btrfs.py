marker = "E2E-NIXOS-PLAINTEXT-MARKER"
prepare(client, "client")
make_data(client, marker)

with subtest("the btrfs engine under the units: two runs, each snapshot a read-only subvolume"):
    backup(client)
    client.succeed("echo changed > /data/sub/f9")
    backup(client)
    snaps = client.succeed("e2e-sync --list home").split()
    assert len(snaps) == 2, f"want 2 snapshots, have {snaps}"
    client.succeed("e2e-open --read-only home")
    client.succeed("test $(findmnt -no FSTYPE /run/e2e-backup/home/fs) = btrfs")
    for s in snaps:
        client.succeed(f"btrfs subvolume show /run/e2e-backup/home/fs/snapshots/{s} | grep -Eq 'Flags:.*readonly'")
    client.succeed("e2e-close home")
    assert_clean(client)

with subtest("the server holds ciphertext only"):
    server.succeed(f"test $(grep -c -F {marker} {server_file('client')} || true) = 0")

with subtest("restore equals the source, and latest verifies"):
    restore_and_compare(client)
    client.succeed("e2e-sync --verify home")
    assert_clean(client)
