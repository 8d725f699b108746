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
    """A decoded upload: the frame (H x W or H x W x 3 BGR, uint8/uint16) and what it was."""

    frame: np.ndarray
    kind: str                 # png | jpeg | bmp | tiff | dicom
    frames_in_file: int = 1   # DICOM cines hold several
    frame_index: int = 0


def sniff_kind(data: bytes) -> str | None:
    """File type from magic bytes: png | jpeg | bmp | tiff | dicom, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM") and len(data) > 26:
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
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


def _decode_raster(data: bytes, kind: str, max_pixels: int) -> np.ndarray:
    import cv2

    size = declared_size(data, kind)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels)
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if frame is None or frame.size == 0:
        raise UploadRejected(f"cannot decode this {kind.upper()} file (truncated or corrupt)", status=400,
                             hint="export the frame again as PNG and retry")
    _check_pixels(frame.shape[1], frame.shape[0], max_pixels)
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = np.ascontiguousarray(frame[:, :, :3])
    return frame


def _decode_dicom(data: bytes, frame_index: int | None, max_pixels: int) -> DecodedUpload:
    """One DICOM frame through the runtime's reader (colour, palette, YBR, MONOCHROME1, decoders).

    The bytes go to a private temporary file only because that reader takes a path; its messages
    are re-worded to name "upload", never the temporary path, and never carry header values.
    """
    import os
    import tempfile

    from usedge.runtime.dicom import open_dicom

    with tempfile.TemporaryDirectory(prefix="usedge-upload-") as tmp:  # mode 0700
        path = os.path.join(tmp, "upload.dcm")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            dcm = open_dicom(path)
            _check_pixels(dcm.cols, dcm.rows, max_pixels)
            n = dcm.n_frames
            index = 0 if frame_index is None else frame_index
            if not 0 <= index < n:
                raise UploadRejected(f"frame {index} requested, the file has {n} frame(s)", status=422,
                                     hint=f"use ?frame= between 0 and {n - 1}")
            frame = dcm.frame(index)
        except UploadRejected:
            raise
        except InputError as exc:
            status = 400 if "header" in exc.message or "not a DICOM" in exc.message else 422
            raise UploadRejected(exc.message, status=status, hint=exc.hint) from exc
        finally:
            dcm = None  # drop the dataset before the folder goes
    return DecodedUpload(frame=frame, kind="dicom", frames_in_file=n, frame_index=index)


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
    if kind == "dicom":
        return _decode_dicom(data, frame_index, max_pixels)
    if frame_index not in (None, 0):
        raise UploadRejected(f"frame {frame_index} requested, a {kind.upper()} has one frame", status=422,
                             hint="leave out ?frame= for still images")
    return DecodedUpload(frame=_decode_raster(data, kind, max_pixels), kind=kind)
