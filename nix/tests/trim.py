prepare(client, "client")
make_data(client, "trim", mib=64)
backup(client)
server.wait_for_unit("e2e-backup-nbd-client.service")
server.fail("ss -ltn | grep ':10810' | grep -v 127.0.0.1")  # NBD is plain text: loopback only

with subtest("deleted data is pruned, then e2e-trim@home returns the space to the server"):
    client.succeed("rm /data/big.bin")
    backup(client)  # keep_last = 1 prunes the snapshot that held big.bin
    before = server_alloc("client")
    client.succeed("systemctl start e2e-trim@home.service")
    assert_clean(client)
    after = server_alloc("client")
    assert after < before - 32 * 1024 * 1024, f"allocation {before} -> {after}"

with subtest("the data left is intact"):
    restore_and_compare(client)
