prepare(client, "client")
make_data(client, "grow")
backup(client)

with subtest("e2e-grow@home grows the container online and releases the stack"):
    client.succeed(
        "mkdir -p /run/systemd/system/e2e-grow@home.service.d",
        "printf '[Service]\\nEnvironment=E2E_GROW=--to=384M\\n' > /run/systemd/system/e2e-grow@home.service.d/to.conf",
        "systemctl daemon-reload",
        "systemctl start e2e-grow@home.service",
    )
    assert_clean(client)
    size = int(server.succeed(f"stat -c %s {server_file('client')}").strip())
    assert size == 384 * 1024 * 1024, f"container is {size} bytes"

with subtest("the filesystem inside grew and the data is intact"):
    fs = client.succeed("e2e-open home").strip()
    blocks = int(client.succeed(f"df --output=size -B1M {fs} | tail -n1").strip())
    assert blocks > 300, f"filesystem is {blocks} MiB"
    client.succeed("e2e-close home")
    restore_and_compare(client)
