"""Every net command of vhost-user-netd's QMP, through QEMU's own Python client (qemu.qmp).

Usage: qmp_netdev_client.py SOCKET. The daemon runs with a tap netdev "n0" behind port "vm0".
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient


async def expect_error(client: QMPClient, cls: str, desc: str, cmd: str, args: dict) -> None:
    try:
        await client.execute(cmd, args)
    except ExecuteError as err:
        assert err.error_class == cls, (cmd, err)
        assert err.error.error.desc == desc, (cmd, err)
        return
    raise AssertionError(f"{cmd} {args} succeeded")


async def check(path: str) -> None:
    client = QMPClient("netdev-test")
    await client.connect(path)

    netdevs = await client.execute("query-netdev")
    assert netdevs == [{"id": "n0", "type": "tap", "ifname": "vupy0", "script": "no",
                        "downscript": "no", "peer-id": "vm0"}], netdevs

    await client.execute("set_link", {"name": "vm0", "up": False})
    stats = await client.execute("x-query-port-stats")
    assert stats[0]["port-id"] == "vm0" and stats[0]["link-up"] is False, stats
    await client.execute("set_link", {"name": "n0", "up": True})

    await client.execute("netdev_del", {"id": "n0"})
    assert await client.execute("query-netdev") == []
    await client.execute("netdev_add", {"type": "tap", "id": "n0", "ifname": "vupy1",
                                        "script": "no", "downscript": "no"})
    netdevs = await client.execute("query-netdev")
    assert netdevs[0]["ifname"] == "vupy1" and netdevs[0]["peer-id"] == "vm0", netdevs

    filters = await client.execute("query-rx-filter", {"name": "vm0"})
    assert filters[0]["name"] == "vm0" and filters[0]["promiscuous"] is True, filters
    await client.execute("announce-self", {"initial": 0, "max": 10, "rounds": 1, "step": 1,
                                           "id": "py"})

    await expect_error(client, "DeviceNotFound", "Device 'nope' not found",
                       "netdev_del", {"id": "nope"})
    await expect_error(client, "DeviceNotFound", "Device 'nope' not found",
                       "set_link", {"name": "nope", "up": True})
    await expect_error(client, "GenericError", "Duplicate ID 'n0'",
                       "netdev_add", {"type": "tap", "id": "n0"})
    await expect_error(client, "GenericError", "Parameter 'type' does not accept value 'x'",
                       "netdev_add", {"type": "x", "id": "n1"})
    await expect_error(client, "GenericError", "invalid net client name: nope",
                       "query-rx-filter", {"name": "nope"})
    await client.disconnect()


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(check(sys.argv[1]), timeout=30))
    print("qemu.qmp netdev checks: 1 passed, 0 failed")
