#!/usr/bin/env python3
"""Drives a running swiftdm (started with -S) through QEMU's own QMP client library:
query-status across stop/cont/system_reset, the events each produces, fd passing with
add-fd (SCM_RIGHTS) into xen-save-devices-state, then quit. Exits non-zero on the first
mismatch; prints one line per check so a failure says where it was.

usage: lifecycle.py SOCKET_PATH SCRATCH_DIR
"""
import asyncio
import os
import sys

from qemu.qmp import QMPClient, ExecuteError


def check(condition, what):
    if not condition:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


async def expect_event(listener, name, timeout=10):
    while True:
        event = await asyncio.wait_for(listener.get(), timeout)
        if event["event"] == name:
            check("timestamp" in event and "seconds" in event["timestamp"], f"{name} event has a timestamp")
            return event


async def status(qmp):
    return (await qmp.execute("query-status"))["status"]


async def main(path, scratch):
    qmp = QMPClient("swiftdm-test")
    await qmp.connect(path)
    version = qmp.greeting.QMP.version
    check(version["qemu"]["major"] == 7 and version["qemu"]["minor"] == 2, "greeting advertises QEMU 7.2")
    check("SwiftDM" in version["package"], "greeting package names SwiftDM")
    check(await status(qmp) == "prelaunch", "-S starts in prelaunch")

    with qmp.listener() as listener:
        await qmp.execute("cont")
        await expect_event(listener, "RESUME")
        check(await status(qmp) == "running", "cont: running")

        await qmp.execute("stop")
        await expect_event(listener, "STOP")
        check(await status(qmp) == "paused", "stop: paused")

        await qmp.execute("system_reset")
        event = await expect_event(listener, "RESET")
        check(event["data"] == {"guest": False, "reason": "host-qmp-system-reset"}, "RESET says host-qmp-system-reset")
        st = await status(qmp)
        # QEMU: a VM reset while stopped waits in prelaunch for the next cont.
        check(st == "prelaunch", f"system_reset of a stopped VM leaves it in prelaunch (status {st})")

        await qmp.execute("cont")
        await expect_event(listener, "RESUME")
        check(await status(qmp) == "running", "cont again: running")

    # fd passing: libxl's save flow (stop, add-fd, xen-save-devices-state /dev/fdset/N).
    save_path = os.path.join(scratch, "devstate.bin")
    fd = os.open(save_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    qmp.send_fd_scm(fd)
    added = await qmp.execute("add-fd", {"opaque": "save-file"})
    os.close(fd)
    check(isinstance(added["fdset-id"], int) and isinstance(added["fd"], int), f"add-fd returned {added}")
    fdsets = await qmp.execute("query-fdsets")
    check(any(s["fdset-id"] == added["fdset-id"] and s["fds"][0].get("opaque") == "save-file" for s in fdsets),
          "query-fdsets lists the passed descriptor")
    with qmp.listener() as listener:
        await qmp.execute("stop")
        await expect_event(listener, "STOP")
    await qmp.execute("xen-save-devices-state", {"filename": f"/dev/fdset/{added['fdset-id']}", "live": False})
    with open(save_path, "rb") as f:
        check(f.read(16) == b"SWIFTDM-DEVSTATE", "the device state landed in the passed file")
    try:
        await qmp.execute("add-fd")
        check(False, "add-fd without a descriptor must fail")
    except ExecuteError as error:
        check(error.error.error.class_ == "GenericError", f"add-fd without a descriptor: {error.error.error.desc}")
    await qmp.execute("remove-fd", {"fdset-id": added["fdset-id"]})

    try:
        await qmp.execute("no-such-command")
        check(False, "unknown command must fail")
    except ExecuteError as error:
        check(error.error.error.class_ == "CommandNotFound", "unknown command: CommandNotFound")

    with qmp.listener() as listener:
        await qmp.execute("quit")
        event = await expect_event(listener, "SHUTDOWN")
        check(event["data"] == {"guest": False, "reason": "host-qmp-quit"}, "quit: SHUTDOWN host-qmp-quit")
    try:
        await qmp.disconnect()
    except EOFError:
        # After quit the server closes the socket itself (QEMU does too); the client's reader
        # may see that end of file before disconnect() runs.
        pass
    print("PASS", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
