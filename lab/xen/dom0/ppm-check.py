#!/usr/bin/env python3
"""Checks the pictures of the hvm-vga scenario (binary PPM: the DM's screendump, or a VNC
client's JPEG through djpeg). Prints what it found; exit status 1 when the picture is wrong.

  ppm-check.py text FILE        text mode: 640 or 720 x 400, light characters in the first row
  ppm-check.py bars FILE [box]  1024x768 with the payload's 8 colour bars (and its white box)
  ppm-check.py same A B         same size and nearly the same pixels (JPEG is lossy)
"""
import sys

BARS = [0xff0000, 0x00ff00, 0x0000ff, 0xffff00, 0xff00ff, 0x00ffff, 0x808080, 0x404040]


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    fields, pos = [], 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' comments allowed
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos)
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise SystemExit(f"{path}: not a binary 8-bit PPM ({fields[0]!r})")
    width, height = int(fields[1]), int(fields[2])
    pixels = data[pos + 1:pos + 1 + 3 * width * height]
    if len(pixels) != 3 * width * height:
        raise SystemExit(f"{path}: truncated ({len(pixels)} of {3 * width * height} bytes)")
    return width, height, pixels


def pixel(picture, x, y):
    width, _, pixels = picture
    i = 3 * (y * width + x)
    return pixels[i] << 16 | pixels[i + 1] << 8 | pixels[i + 2]


def close(a, b, tolerance=24):
    return all(abs((a >> s & 255) - (b >> s & 255)) <= tolerance for s in (16, 8, 0))


def check_text(path):
    picture = load(path)
    width, height, _ = picture
    if (width, height) not in ((640, 400), (720, 400)):
        return f"{path}: {width}x{height}, expected a 80x25 text mode (640 or 720 x 400)"
    lit = sum(1 for y in range(16) for x in range(width) if pixel(picture, x, y) & 0x808080)
    if lit < 100:
        return f"{path}: only {lit} light pixels in the first text row (expected the payload's line)"
    print(f"text {width}x{height}, {lit} light pixels in row 0")
    return None


def check_bars(path, box):
    picture = load(path)
    width, height, _ = picture
    if (width, height) != (1024, 768):
        return f"{path}: {width}x{height}, expected 1024x768"
    for i, colour in enumerate(BARS):
        got = pixel(picture, 64 + 128 * i, 400)
        if not close(got, colour):
            return f"{path}: bar {i} at ({64 + 128 * i},400) is {got:06x}, expected {colour:06x}"
    if box:
        got = pixel(picture, 64, 64)
        if not close(got, 0xffffff):
            return f"{path}: box pixel (64,64) is {got:06x}, expected ffffff"
        if not close(pixel(picture, 100, 64), BARS[0]):
            return f"{path}: (100,64) right of the box is {pixel(picture, 100, 64):06x}, expected the red bar"
    print(f"bars 1024x768{' with box' if box else ''}")
    return None


def check_same(a, b):
    pa, pb = load(a), load(b)
    if pa[:2] != pb[:2]:
        return f"{a} is {pa[0]}x{pa[1]} but {b} is {pb[0]}x{pb[1]}"
    total = sum(abs(x - y) for x, y in zip(pa[2], pb[2]))
    mean = total / len(pa[2])
    if mean > 6:
        return f"{a} and {b} differ: mean absolute difference {mean:.2f} per channel"
    print(f"same {pa[0]}x{pa[1]} (mean difference {mean:.2f})")
    return None


def main(argv):
    if len(argv) >= 2 and argv[0] == "text":
        error = check_text(argv[1])
    elif len(argv) >= 2 and argv[0] == "bars":
        error = check_bars(argv[1], argv[2:] == ["box"])
    elif len(argv) == 3 and argv[0] == "same":
        error = check_same(argv[1], argv[2])
    else:
        raise SystemExit(__doc__)
    if error:
        print(error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
