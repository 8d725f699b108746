"""One uploaded file (bytes) -> one frame, with type and size limits checked before any decoding.

The type is decided by the file's first bytes, never by its name or declared Content-Type (a name
may carry a patient's name; a header can lie). Every refusal is a `UploadRejected` carrying the HTTP
status the server answers with and a one-line message that names no file and no patient.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from usedge.errors import InputError

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024   # a 1080p lossless frame is ~3 MB; a DICOM cine can be more
DEFAULT_MAX_PIXELS = 40_000_000               # per frame; a scanner screen is ~2 MP
ACCEPTED = "PNG, JPEG, BMP, TIFF or DICOM (Part 10, with the 'DICM' preamble)"


class UploadRejected(InputError):
    """An upload the server refuses; `status` is the HTTP status code (400, 413, 415, 422)."""

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None):
        self.status = status
        super().__init__(message, path="upload", hint=hint)


@dataclass
class DecodedUpload:
    """A decoded upload: the frame (H x W, H x W x 3 BGR or x 4 BGRA; uint8/uint16) and what it was."""

    frame: np.ndarray
    kind: str                 # png | jpeg | bmp | tiff | dicom
    frames_in_file: int = 1   # DICOM cines hold several
    frame_index: int = 0
    regions: list | None = None  # DICOM ultrasound region boxes (x, y, w, h), for the field of view


def sniff_kind(data: bytes) -> str | None:
    """File type from magic bytes: png | jpeg | bmp | tiff | dicom, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) > 26:
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "tiff"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, or None when the stream is not understood."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seg = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + seg
    return None


def declared_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) read from the header without decoding pixels, where the format makes it cheap."""
    try:
        if kind == "png" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if kind == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "jpeg":
            return _jpeg_size(data)
    except struct.error:
        return None
    return None


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise UploadRejected(f"image has no pixels ({w} x {h})", status=400, hint="upload a real image")
    if w * h > max_pixels:
        raise UploadRejected(f"image is {w} x {h} pixels, over the limit of {max_pixels:,}", status=413,
                             hint="downscale the image, or start the server with a larger --max-pixels")


def _status_for(message: str) -> int:
    """HTTP status for a runtime InputError about an upload's content."""
    if "exceeds" in message and "px" in message:
        return 413
    if "does not exist" in message or "no pixel data" in message or "cannot decode the compressed" in message:
        return 422
    return 400


def _read_file(data: bytes, kind: str, frame_index: int) -> tuple[np.ndarray, list | None, int]:
    """(frame, DICOM region boxes or None, frames in file) through the runtime's one file reader.

    `usedge.runtime.imageio` reads paths (header checks, truncation, DICOM colour/palette/YBR and
    regions, no patient data); the bytes go to a private temporary file that is deleted at once.
    Its messages are re-worded to name "upload", never the temporary path.
    """
    import os
    import tempfile

    from usedge.runtime.imageio import count_frames, read_image_and_regions

    with tempfile.TemporaryDirectory(prefix="usedge-upload-") as tmp:  # mode 0700
        path = os.path.join(tmp, "upload.dcm" if kind == "dicom" else f"upload.{kind}")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            frames = count_frames(path)
            if not 0 <= frame_index < frames:
                raise UploadRejected(f"frame {frame_index} requested, the file has {frames} frame(s)", status=422,
                                     hint=f"use ?frame= between 0 and {frames - 1}")
            frame, regions = read_image_and_regions(path, frame_index=frame_index)
        except UploadRejected:
            raise
        except InputError as exc:
            raise UploadRejected(exc.message, status=_status_for(exc.message), hint=exc.hint) from exc
    return frame, regions, frames


def decode_upload(data: bytes, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS, frame_index: int | None = None) -> DecodedUpload:
    """Bytes of one uploaded file -> the frame to classify. Raises UploadRejected (with an HTTP status)."""
    if not data:
        raise UploadRejected("empty upload", status=400, hint="attach the image as form field 'file' or as the body")
    if len(data) > max_bytes:
        raise UploadRejected(f"upload is {len(data):,} bytes, over the limit of {max_bytes:,}", status=413,
                             hint="send a smaller file, or start the server with a larger --max-upload-mb")
    kind = sniff_kind(data)
    if kind is None:
        raise UploadRejected("not a supported image type", status=415, hint=f"send {ACCEPTED}")
    if kind != "dicom" and frame_index not in (None, 0):
        raise UploadRejected(f"frame {frame_index} requested, a {kind.upper()} has one frame", status=422,
                             hint="leave out ?frame= for still images")
    size = declared_size(data, kind)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels)
    frame, regions, frames = _read_file(data, kind, frame_index or 0)
    _check_pixels(frame.shape[1], frame.shape[0], max_pixels)
    return DecodedUpload(frame=frame, kind=kind, frames_in_file=frames, frame_index=frame_index or 0, regions=regions)
