"""Image files -> frames: PNG, JPEG, BMP, TIFF (first page) and DICOM (all frames), safely.

    read_image(path)              -> uint8/uint16 H x W or H x W x 3 (BGR) / H x W x 4 (BGRA), first frame
    read_image_and_regions(path)  -> (frame, DICOM ultrasound region boxes or None)
    iter_frames(path)             -> (frame_index, frame) for every frame (1 for an image)

Before anything is decoded the header's width x height is read and files over MAX_PIXELS are
refused (a decompression bomb: a few KB of PNG can claim 10^10 pixels). Zero-byte, truncated and
corrupt files raise InputError naming the file.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from usedge.errors import InputError
from usedge.runtime.dicom import MAX_PIXELS, is_dicom, open_dicom

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk")
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + seg_len
    raise ValueError("no SOF marker")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ValueError("short BMP header")
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)


def _tiff_size(data: bytes) -> tuple[int, int]:
    end = "<" if data[:2] == b"II" else ">"
    if data[2:4] == (b"\x2b\x00" if end == "<" else b"\x00\x2b"):   # BigTIFF
        off = struct.unpack(end + "Q", data[8:16])[0]
        count = struct.unpack(end + "Q", data[off:off + 8])[0]
        base, entry, vals = off + 8, 20, {}
        for k in range(min(count, 4096)):
            e = base + k * entry
            tag, typ = struct.unpack(end + "HH", data[e:e + 4])
            if tag in (256, 257):
                fmt = {3: "H", 4: "I", 16: "Q"}.get(typ, "I")
                vals[tag] = struct.unpack(end + fmt, data[e + 12:e + 12 + struct.calcsize(fmt)])[0]
    else:
        off = struct.unpack(end + "I", data[4:8])[0]
        count = struct.unpack(end + "H", data[off:off + 2])[0]
        base, entry, vals = off + 2, 12, {}
        for k in range(min(count, 4096)):
            e = base + k * entry
            tag, typ = struct.unpack(end + "HH", data[e:e + 4])
            if tag in (256, 257):
                fmt = "H" if typ == 3 else "I"
                vals[tag] = struct.unpack(end + fmt, data[e + 8:e + 8 + struct.calcsize(fmt)])[0]
    if 256 not in vals or 257 not in vals:
        raise ValueError("no ImageWidth/ImageLength tags")
    return vals[256], vals[257]


def _header_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the first bytes; ValueError when unknown or damaged."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG", _png_size(data)
    if data[:2] == b"\xff\xd8":
        return "JPEG", _jpeg_size(data)
    if data[:2] == b"BM":
        return "BMP", _bmp_size(data)
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF", _tiff_size(data)
    raise ValueError("unknown format")


def _looks_truncated(fmt: str, data: bytes) -> bool:
    if fmt == "PNG":
        return b"IEND" not in data[-16:]
    if fmt == "JPEG":
        return b"\xff\xd9" not in data[-64:]          # EOI marker (some writers pad after it)
    return False


def read_image(path: str | Path, *, frame_index: int = 0) -> np.ndarray:
    """An image or DICOM file -> one frame (uint8/uint16; gray, BGR or BGRA as stored). InputError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=path, hint="check the path")
    if is_dicom(path):
        return open_dicom(path).frame(frame_index)
    if frame_index != 0:
        raise InputError(f"frame {frame_index} does not exist (an image file has one)", path=path, hint="use frame 0")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=path, hint="check permissions") from exc
    if not data:
        raise InputError("empty file (0 bytes)", path=path, hint="copy the image again")
    try:
        fmt, (w, h) = _header_size(data)
    except (ValueError, struct.error, IndexError) as exc:
        known = data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] in (b"\xff\xd8", b"BM", b"II", b"MM")
        what = "damaged image header" if known else "not a PNG, JPEG, BMP, TIFF or DICOM file"
        raise InputError(what, path=path, hint="pass an image or DICOM file; re-export it if it was cut short") from exc
    if w <= 0 or h <= 0:
        raise InputError(f"{fmt} header says {w}x{h} pixels", path=path, hint="the file is damaged; re-export it")
    if w * h > MAX_PIXELS:
        raise InputError(f"{fmt} of {w}x{h} pixels exceeds the {MAX_PIXELS // 1_000_000} Mpx limit (decompression bomb?)",
                         path=path, hint="downscale the image; ultrasound screens are below 10 Mpx")
    if _looks_truncated(fmt, data):
        raise InputError(f"truncated {fmt} file (no end marker)", path=path, hint="copy or export the image again")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise InputError(f"cannot decode {fmt} data (corrupt file?)", path=path, hint="copy or export the image again")
    if image.shape[0] != h or image.shape[1] != w:
        raise InputError(f"{fmt} decoded to {image.shape[1]}x{image.shape[0]}, header says {w}x{h}", path=path,
                         hint="the file is damaged; re-export it")
    return image


def read_image_and_regions(path: str | Path, *, frame_index: int = 0
                           ) -> tuple[np.ndarray, list[tuple[int, int, int, int]] | None]:
    """One frame and, for DICOM, its raw ultrasound region boxes (prepare checks them against the frame)."""
    path = Path(path)
    if path.is_file() and is_dicom(path):
        d = open_dicom(path)
        return d.frame(frame_index), (d.raw_regions or None)
    return read_image(path, frame_index=frame_index), None


def iter_frames(path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """(frame_index, frame) for every frame of an image (one) or a DICOM file (all, decoded one by one)."""
    path = Path(path)
    if path.is_file() and is_dicom(path):
        yield from open_dicom(path).frames()
    else:
        yield 0, read_image(path)


def count_frames(path: str | Path) -> int:
    path = Path(path)
    return open_dicom(path).n_frames if path.is_file() and is_dicom(path) else 1
