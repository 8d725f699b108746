"""One uploaded file (bytes) -> one frame, with type and size limits checked before any decoding.

The type is decided by the file's first bytes, never by its name or declared Content-Type (a name
may carry a patient's name; a header can lie). The bytes are read in memory by the runtime's one
reader (usedge.runtime.formats.read_image_bytes: no temporary file). Every refusal is an
`UploadRejected` carrying the HTTP status the server answers with, chosen by the error's type,
and a one-line message that names no file and no patient.
"""

from __future__ import annotations

from usedge.errors import InputError, InputTooLarge, NoSuchFrame, Undecodable, UnsupportedInput
from usedge.runtime.formats import Decoded, read_image_bytes
from usedge.runtime.formats import MAX_PIXELS as DEFAULT_MAX_PIXELS  # noqa: F401 - the server's --max-pixels default

DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024   # a 1080p lossless frame is ~3 MB; a DICOM cine can be more
STATUS = {InputTooLarge: 413, UnsupportedInput: 415, NoSuchFrame: 422, Undecodable: 400}


class UploadRejected(InputError):
    """An upload the server refuses; `status` is the HTTP status code (400, 413, 415, 422)."""

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None):
        self.status = status
        super().__init__(message, path="upload", hint=hint)


def status_for(exc: InputError) -> int:
    """HTTP status for an InputError about an upload's content, by its type; 422 for other unusable content."""
    return next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 422)


def decode_upload(data: bytes, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS, frame_index: int | None = None) -> Decoded:
    """Bytes of one uploaded file -> the frame to classify. Raises UploadRejected (with an HTTP status)."""
    if not data:
        raise UploadRejected("empty upload", status=400, hint="attach the image as form field 'file' or as the body")
    if len(data) > max_bytes:
        raise UploadRejected(f"upload is {len(data):,} bytes, over the limit of {max_bytes:,}", status=413,
                             hint="send a smaller file, or start the server with a larger --max-upload-mb")
    try:
        return read_image_bytes(data, "upload", frame_index=frame_index or 0, max_pixels=max_pixels)
    except InputError as exc:
        raise UploadRejected(exc.message, status=status_for(exc), hint=exc.hint) from exc
