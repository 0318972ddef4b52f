"""Hot-swap to an af-xdp netdev whose socket arrives over QMP, through qemu.qmp.

Usage: af_xdp_netdev_add.py SOCKET IFNAME FD. The daemon runs without CAP_NET_ADMIN with port
"vm" on af-xdp netdev "n0" (inhibit=on, sock-fds); FD is a new unbound AF_XDP socket that a
privileged helper already put in the XSK map for queue 0. The script replaces n0 by a netdev on
FD (getfd + netdev_add ... sock-fds=NAME) and checks QEMU's errors for af-xdp's option rules.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient


async def expect_error(client: QMPClient, desc: str, args: dict) -> None:
    try:
        await client.execute("netdev_add", args)
    except ExecuteError as err:
        assert err.error_class == "GenericError", (args, err)
        assert desc in err.error.error.desc, (args, desc, err.error.error.desc)
        return
    raise AssertionError(f"netdev_add {args} succeeded")


async def check(path: str, ifname: str, fd: int) -> None:
    client = QMPClient("af-xdp-test")
    await client.connect(path)

    netdevs = await client.execute("query-netdev")
    assert netdevs[0]["type"] == "af-xdp" and netdevs[0]["inhibit"] is True, netdevs
    assert netdevs[0]["ifname"] == ifname and netdevs[0]["peer-id"] == "vm", netdevs

    base = {"type": "af-xdp", "id": "n1", "ifname": ifname}
    await expect_error(client, "'inhibit=on' requires 'sock-fds' or 'map-path'",
                       {**base, "inhibit": True})
    await expect_error(client, "'sock-fds' and 'map-path' require 'inhibit=on'",
                       {**base, "sock-fds": "x"})
    await expect_error(client, "'sock-fds' and 'map-path' are mutually exclusive",
                       {**base, "inhibit": True, "sock-fds": "x", "map-path": "/m"})
    await expect_error(client, "'map-start-index' requires 'map-path'",
                       {**base, "inhibit": True, "sock-fds": "x", "map-start-index": 1})
    await expect_error(client, "expected 2 socket fds, got 1",
                       {**base, "queues": 2, "inhibit": True, "sock-fds": "x"})
    await expect_error(client, "failed to get ifindex for 'nosuch0'",
                       {**base, "ifname": "nosuch0"})
    await expect_error(client, "Parameter 'mode' does not accept value 'zc'",
                       {**base, "mode": "zc"})
    await expect_error(client, "No file descriptor named x has been received",
                       {**base, "inhibit": True, "sock-fds": "x"})

    # Hot-swap: the port's link goes down with n0 and comes back on the new netdev.
    await client.execute("netdev_del", {"id": "n0"})
    client.send_fd_scm(fd)
    await client.execute("getfd", {"fdname": "xsk0"})
    await client.execute("netdev_add", {"type": "af-xdp", "id": "n0", "ifname": ifname,
                                        "inhibit": True, "sock-fds": "xsk0"})
    netdevs = await client.execute("query-netdev")
    assert netdevs == [{"id": "n0", "type": "af-xdp", "ifname": ifname, "inhibit": True,
                        "sock-fds": "xsk0", "peer-id": "vm"}], netdevs
    await client.disconnect()


if __name__ == "__main__":
    asyncio.run(check(sys.argv[1], sys.argv[2], int(sys.argv[3])))
