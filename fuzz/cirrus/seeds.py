#!/usr/bin/env python3
"""Writes seed inputs for FuzzCirrusBlitter.swift (see its input layout) into DIR: one blit of
each kind the engine does (copy forwards and backwards, transparent copy, colour expansion,
pattern fill and expansion, solid fill, system-source copy and expansion) on a 4 KiB VRAM."""
import os, sys

def gr(index, value):
    return bytes([index & 0x3f, value & 0xff])

def blit(width, height, dst, dst_pitch, src=0, src_pitch=0, mode=0, ext=0, rop=0x0d, clip=0, extra=b""):
    out = bytearray([4 << 1])
    for i, v in [(0x20, width - 1), (0x22, height - 1), (0x24, dst_pitch), (0x26, src_pitch)]:
        out += gr(i, v) + gr(i + 1, v >> 8)
    for i in range(3):
        out += gr(0x2c + i, src >> (8 * i))
    out += gr(0x01, 0x5a) + gr(0x11, 0xa5) + gr(0x00, 0x11) + gr(0x10, 0x22)
    out += gr(0x2f, clip) + gr(0x30, mode) + gr(0x32, rop) + gr(0x33, ext) + gr(0x34, 7)
    for i in range(3):
        out += gr(0x28 + i, dst >> (8 * i))
    out += gr(0x31, 0x02) + extra + bytes([0xc0, 0])
    return bytes(out)

SEEDS = {
    "copy": blit(32, 8, 1024, 64, 0, 64),
    "backwards": blit(32, 8, 1024 + 7 * 64 + 31, 64, 7 * 64 + 31, 64, mode=0x01),
    "transparent16": blit(32, 4, 2048, 64, 0, 64, mode=0x18),
    "expand24": blit(30, 4, 512, 96, 0, mode=0xa0, clip=5),
    "pattern32": blit(64, 9, 1024, 128, 256, mode=0x70),
    "pattern-expand": blit(16, 16, 0, 16, 64, mode=0xc8, ext=0x02),
    "solid": blit(40, 10, 100, 50, mode=0xc0, ext=0x04, rop=0x59),
    "system-copy": blit(6, 3, 300, 8, mode=0x04, extra=bytes([0x80 + 7, 1, 0xc0, 0, 0x80 + 15, 2])),
    "system-expand": blit(20, 2, 0, 32, mode=0x84, ext=0x01, extra=bytes([0x80 + 7, 0xaa])),
    "mmio": bytes([4 << 1, 0x40, 0x08, 0x40, 0x0a, 0x40, 0x0c, 0x40, 0x40]),
}

os.makedirs(sys.argv[1], exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(sys.argv[1], "seed-" + name), "wb") as f:
        f.write(data)
