"""A host-wide daemon started with no port or netdev gets three over QMP, through QEMU's own
Python client (qemu.qmp): a tap joined to hub 0 by a hub port, one hub port per guest, and
three ports on them, each announced by VHOST_USER_PORT_ADDED.

Usage: ports_add.py SOCKET DIR TAP. Sockets are created as DIR/a.sock, DIR/b.sock, DIR/c.sock.
"""

import asyncio
import sys

from qemu.qmp import QMPClient


async def check(path: str, directory: str, tap: str) -> None:
    client = QMPClient("ports-test")
    await client.connect(path)
    assert await client.execute("query-ports") == []
    assert await client.execute("query-netdev") == []

    await client.execute("netdev_add", {"type": "tap", "id": "t0", "ifname": tap,
                                        "script": "no", "downscript": "no"})
    await client.execute("netdev_add", {"type": "hubport", "id": "h0", "hubid": 0,
                                        "netdev": "t0"})
    added = []
    with client.listener() as listener:
        for port in "abc":
            await client.execute("netdev_add", {"type": "hubport", "id": f"h{port}",
                                                "hubid": 0})
            await client.execute("port-add", {"id": port, "netdev": f"h{port}",
                                              "socket-path": f"{directory}/{port}.sock"})
        async for event in listener:
            if event["event"] == "VHOST_USER_PORT_ADDED":
                added.append((event["data"]["port-id"], event["data"]["netdev-id"]))
                if len(added) == 3:
                    break
    assert added == [("a", "ha"), ("b", "hb"), ("c", "hc")], added

    ports = await client.execute("query-ports")
    assert [(p["id"], p["netdev"], p["connected"], p["running"]) for p in ports] == [
        ("a", "ha", False, False), ("b", "hb", False, False), ("c", "hc", False, False)], ports
    # The uplink is in query-netdev as QEMU reports it.
    netdevs = await client.execute("query-netdev")
    assert {"type": "hubport", "id": "h0", "hubid": 0, "netdev": "t0"} in netdevs, netdevs
    await client.disconnect()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(check(*sys.argv[1:4]), timeout=30))
    print("qemu.qmp port-add checks: 1 passed, 0 failed")
