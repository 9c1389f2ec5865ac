#!/usr/bin/env python3
"""Writes well-formed seed inputs for FuzzVirtio.swift (see its input layout) into DIR:
a queue of 8 at desc 0x000 / avail 0x100 / used 0x200 holding read, write, flush, get-id and
discard requests as direct chains, one header-split chain and one indirect chain."""
import os, struct, sys

def seed(flags, chains, indirect=None):
    ram = bytearray(0x1000)
    desc = 0
    heads = []
    for chain in chains:
        heads.append(desc)
        for i, (addr, length, writable) in enumerate(chain):
            last = i == len(chain) - 1
            struct.pack_into("<QIHH", ram, 16 * desc, addr, length, (0 if last else 1) | (2 if writable else 0), desc + 1)
            desc += 1
    if indirect:
        table = 0x600
        for i, (addr, length, writable) in enumerate(indirect):
            last = i == len(indirect) - 1
            struct.pack_into("<QIHH", ram, table + 16 * i, addr, length, (0 if last else 1) | (2 if writable else 0), i + 1)
        heads.append(desc)
        struct.pack_into("<QIHH", ram, 16 * desc, table, 16 * len(indirect), 4, 0)
    for i, h in enumerate(heads):
        struct.pack_into("<H", ram, 0x104 + 2 * i, h)
    struct.pack_into("<H", ram, 0x102, len(heads))
    for n, (kind, sector) in enumerate([(0, 1), (1, 2), (4, 0), (8, 0), (11, 0), (13, 0)]):
        struct.pack_into("<IIQ", ram, 0x400 + 16 * n, kind, 0, sector)
    struct.pack_into("<QII", ram, 0x900, 3, 1, 0)
    header = struct.pack("<BBHIII", flags, 3, 0, 0x000, 0x100, 0x200)
    return header + bytes(ram)

status = lambda n: (0x700 + n, 1, True)
plain = [[(0x400, 16, False), (0x800, 512, True), status(0)],
         [(0x410, 16, False), (0x800, 512, False), status(1)],
         [(0x420, 16, False), status(2)],
         [(0x430, 16, False), (0x800, 20, True), status(3)]]
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
seeds = {
    "direct": seed(0, plain),
    "eventidx": seed(1, plain),
    "split-header": seed(0, [[(0x400, 5, False), (0x405, 11, False), (0x800, 513, True)]]),
    "discard": seed(0, [[(0x440, 16, False), (0x900, 16, False), status(4)]]),
    "indirect": seed(2, [[(0x410, 16, False), (0x800, 512, False), status(1)]],
                     indirect=[(0x400, 16, False), (0x800, 1024, True), status(5)]),
}
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
