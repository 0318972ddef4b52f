"""Drives vhost-user-netd's QMP socket with QEMU's own Python client (qemu.qmp).

Usage: qmp_client.py SOCKET. Exits non-zero on the first failed check.
"""

import asyncio
import os
import sys

from qemu.qmp import EventListener, ExecuteError, QMPClient


async def check(path: str) -> None:
    client = QMPClient("vhost-user-netd-test")
    await client.connect(path)  # greeting + qmp_capabilities, no trailing newlines
    version = await client.execute("query-version")
    assert version["qemu"]["major"] == 10, version
    assert version["package"].startswith("vhost-user-netd "), version

    names = {c["name"] for c in await client.execute("query-commands")}
    assert {"qmp_capabilities", "query-version", "query-commands", "quit"} <= names, names

    try:
        await client.execute("no-such-command")
        raise AssertionError("unknown command accepted")
    except ExecuteError as err:
        assert err.error_class == "CommandNotFound", err
        assert err.error.error.desc == "The command no-such-command has not been found", err

    try:
        await client.execute("query-version", {"bogus": 1})
        raise AssertionError("unknown argument accepted")
    except ExecuteError as err:
        assert err.error_class == "GenericError", err
        assert err.error.error.desc == "Parameter 'bogus' is unexpected", err

    # Descriptor passing: getfd takes the one sent with SCM_RIGHTS, closefd releases it.
    read_end, write_end = os.pipe()
    client.send_fd_scm(read_end)
    await client.execute("getfd", {"fdname": "pipe"})
    os.close(read_end)
    await client.execute("closefd", {"fdname": "pipe"})
    try:
        await client.execute("closefd", {"fdname": "pipe"})
        raise AssertionError("closefd of a closed name accepted")
    except ExecuteError as err:
        assert err.error.error.desc == "File descriptor named 'pipe' not found", err
    os.close(write_end)

    # Two clients at once, each with its own session.
    other = QMPClient("second")
    await other.connect(path)
    assert (await other.execute("query-version")) == version
    await other.disconnect()

    # quit: the reply, then SHUTDOWN on the event stream.
    listener = EventListener()
    with client.listen(listener):
        await client.execute("quit")
        async for event in listener:
            if event["event"] == "SHUTDOWN":
                assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}, event
                assert {"seconds", "microseconds"} <= set(event["timestamp"]), event
                break
    try:
        await client.disconnect()
    except EOFError:
        pass  # after quit the daemon closes the connection, as QEMU does


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(check(sys.argv[1]), timeout=30))
    print("qemu.qmp checks: 1 passed, 0 failed")
