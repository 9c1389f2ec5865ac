#!/usr/bin/env python3
"""Appends a protected-mode payload of SIZE bytes (a fixed pattern) to the stub's setup and sets
syssize: make-bzimage.py SETUP SIZE OUT. Also prints the checksums the stub will report."""
import struct, sys

def checksum(data):
    s = 0
    data = data + b"\0" * (-len(data) % 4)
    for (w,) in struct.iter_unpack("<I", data):
        s = (((s << 1) | (s >> 31)) + w) & 0xFFFFFFFF
    return s

def payload(size):
    # Byte i is (i * 7 + i // 251) & 0xFF: not periodic in 4 or 2^n.
    return bytes(((i * 7 + i // 251) & 0xFF) for i in range(size))

if __name__ == "__main__":
    setup = bytearray(open(sys.argv[1], "rb").read())
    size = int(sys.argv[2])
    assert size % 16 == 0, "payload size must be a multiple of 16"
    body = payload(size)
    struct.pack_into("<I", setup, 0x1F4, size // 16)
    open(sys.argv[3], "wb").write(bytes(setup) + body)
    print("kernel size=%08x sum=%08x" % (size, checksum(body)))
