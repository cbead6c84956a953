"""Headless Chromium for page tests: find it (`make tools` installs it), screenshot a page,
read the PNG's pixels and look for a colour. Shared by the report and demo tests."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np

from support.tools import chromium  # noqa: F401  (the page tests' way to get the browser)


def flags(browser: str, work: Path) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={work / 'profile'}"]


def screenshot(browser: str, page: Path, work: Path, size: tuple[int, int] = (1200, 900)
               ) -> tuple[np.ndarray, list[str]]:
    """(RGB pixels of the page at `size`, console/CSP error lines Chromium logged)."""
    shot = work / "shot.png"
    done = subprocess.run([*flags(browser, work), "--enable-logging=stderr", "--v=0",
                           f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines()
               if ":CONSOLE" in line or "Refused to" in line or "Uncaught" in line]
    return png_pixels(shot.read_bytes()), console


def dump_dom(browser: str, page: Path, work: Path) -> str:
    return subprocess.run([*flags(browser, work), "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120).stdout


def png_pixels(data: bytes) -> np.ndarray:
    """RGB(A) pixels of an 8-bit PNG (PIL when available, else zlib and the filters)."""
    try:
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except ImportError:
        pass
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert header is not None, "PNG without IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6), header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = bytearray(stride)
    for r in range(height):
        f = raw[r * (stride + 1)]
        line = bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 255
        out[r] = np.frombuffer(bytes(line), np.uint8)
        prev = line
    return out.reshape(height, width, bpp)[:, :, :3]


def has_colour(pixels: np.ndarray, hex_colour: str, at_least: int = 200) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    close = (np.abs(pixels.astype(int) - rgb) <= 6).all(axis=2)
    return int(close.sum()) >= at_least
