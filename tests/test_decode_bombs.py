"""Decode bombs below the byte limit (issue 16 item 8): every accepted format's header is checked
against the one pixel limit (usedge.runtime.formats.MAX_PIXELS) before decoding, by infer, crop,
train and serve alike. Small real files whose headers claim huge images; the check is the error
type (InputTooLarge / HTTP 413), never memory."""

from __future__ import annotations

import struct
import zlib

import pydicom
import pytest

from tests.fixtures.crop import pydicom_file
from usedge.errors import InputTooLarge
from usedge.runtime.crop import prepare_file
from usedge.runtime.formats import read_image_bytes
from usedge.runtime.sources import iter_file_frames
from usedge.serve.uploads import UploadRejected, decode_upload


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb() -> bytes:
    """A valid 10000 x 9999 16-bit RGBA PNG of zeros (~0.8 MB; 800 MB once decoded, 2.2 GB in infer before)."""
    row = b"\x00" * (1 + 10000 * 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(9999)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", 10000, 9999, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_bomb() -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 60000, 60000, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\x00" * 32 + b"\xff\xd9"


def bmp_bomb() -> bytes:
    header = b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 20000, -20000, 1, 24, 0, 0, 0, 0, 0, 0)
    return header + info + b"\x00" * 64


def tiff_bomb() -> bytes:
    entries = [(256, 4, 1, 30000), (257, 4, 1, 30000), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\x00" * 4
    return b"II*\x00" + struct.pack("<I", 8 + 16) + b"\x00" * 16 + ifd


def webp_bomb() -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (16000 - 1).to_bytes(3, "little") + (16000 - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + b"\x00" * 32
    return b"RIFF" + struct.pack("<I", len(body)) + body


def dicom_bomb(tmp_path) -> bytes:
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.Rows, ds.Columns = 9000, 9000                      # 81 Mpx per frame claimed, pixel data unchanged
    path = tmp_path / "bomb.dcm"
    ds.save_as(path)
    return path.read_bytes()


BOMBS = {"png": png_bomb, "jpg": jpeg_bomb, "bmp": bmp_bomb, "tif": tiff_bomb, "webp": webp_bomb, "dcm": dicom_bomb}


@pytest.mark.parametrize("ext", sorted(BOMBS))
def test_header_bombs_refused_everywhere(tmp_path, ext):
    make = BOMBS[ext]
    data = make(tmp_path) if ext == "dcm" else make()
    assert len(data) < 4 * 1024 * 1024
    path = tmp_path / f"scan.{ext}"
    path.write_bytes(data)
    with pytest.raises(InputTooLarge, match="Mpx"):
        next(iter(iter_file_frames(path)))                         # infer
    with pytest.raises(InputTooLarge):
        prepare_file(path)                                          # training (usedge.train.data); crop reads alike
    with pytest.raises(InputTooLarge):
        read_image_bytes(data, "upload")
    with pytest.raises(UploadRejected) as err:
        decode_upload(data)                                         # serve
    assert err.value.status == 413
