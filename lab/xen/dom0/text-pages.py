#!/usr/bin/python3
# Records which pages of a program's file are mapped in its processes (dom0 side of
# scripts/symbol-order). Every 0.5 s it reads /proc/PID/pagemap of each process running BINARY and
# adds the file offsets of present pages to OUTPUT (one hex offset per line, rewritten each round).
# With /sys/kernel/debug/fault_around_bytes = 4096 a present page is one the process touched;
# with the default 64 KiB the kernel maps its neighbours too.
# usage: text-pages.py BINARY OUTPUT  (runs until killed; `lab run ... TEXT_PAGES=1` starts it)
import os, struct, sys, time

binary, output = os.path.realpath(sys.argv[1]), sys.argv[2]
seen = set()

def scan(pid):
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != binary:
                continue
            start, end = (int(x, 16) for x in f[0].split("-"))
            offset = int(f[2], 16)
            pagemap.seek(start // 4096 * 8)
            data = pagemap.read((end - start) // 4096 * 8)
            for i in range(len(data) // 8):
                (entry,) = struct.unpack_from("<Q", data, i * 8)
                if entry >> 63:
                    seen.add(offset + i * 4096)

while True:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == binary:
                scan(pid)
        except OSError:
            pass
    with open(output + ".tmp", "w") as out:
        out.writelines(f"{o:x}\n" for o in sorted(seen))
    os.replace(output + ".tmp", output)
    time.sleep(0.5)
