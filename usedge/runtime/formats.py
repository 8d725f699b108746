"""Input files: one suffix table, one header probe, one decode-bomb limit, one input expander, one reader.

    IMAGE_SUFFIXES / INPUT_SUFFIXES   what train, crop and serve read (stills + DICOM) / infer reads (+ video)
    probe(data, name)                 -> (kind, width, height) from the header; nothing decoded
    check_pixels(kind, w, h, name)    the ONE pixel limit (MAX_PIXELS per frame), checked before decoding
    expand_inputs(items)              -> (files, notes): files named and accepted files under folders
    drop_lesion_masks(items, files)   -> (files, lines): without the masks a data set's manifest.csv lists
    drop_repeats(files)               -> (files, lines): each file once
    read_file(path) / read_image_bytes(data, name) -> Decoded (frame, kind, frames, index, DICOM regions)
    read_image(path)                  -> one frame (uint8/uint16; gray, BGR or BGRA as stored)
    read_pages(path)                  -> each page of a still (a multi-page TIFF: one frame a page), lazily

Every reader refuses a header that claims more than MAX_PIXELS pixels per frame before anything is
decoded (a decompression bomb: a few KB of PNG can claim 10^10 pixels). DICOM headers are checked
by usedge.runtime.dicom through `check_pixels` (frames decode one at a time). Errors are typed
(usedge.errors: InputTooLarge, Undecodable, UnsupportedInput, NoSuchFrame) and name the file.
"""

from __future__ import annotations

import csv
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from usedge.errors import InputError, InputTooLarge, NoSuchFrame, Undecodable, UnsupportedInput

STILL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".tif", ".tiff",
                            ".webp"})   # .jfif, .jpe: JPEGs as Windows browsers save them
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm",
                            ".ts", ".m2ts", ".mts"})   # MPEG transport streams: what recorders and grabbers write
IMAGE_SUFFIXES = STILL_SUFFIXES | DICOM_SUFFIXES      # train (data sets), crop, serve uploads
INPUT_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES      # infer
ACCEPTED = "PNG, JPEG, BMP, TIFF, WebP or DICOM"
MAX_PIXELS = 40_000_000     # per frame; a 4K scanner screen is 8.3 Mpx


@dataclass
class Decoded:
    """One decoded frame of a file and what it was."""

    frame: np.ndarray           # H x W, H x W x 3 (BGR) or x 4 (BGRA); uint8/uint16
    kind: str                   # png | jpeg | bmp | tiff | webp | dicom
    frames_in_file: int = 1     # DICOM cines and multi-page TIFFs hold several
    frame_index: int = 0
    regions: list | None = None  # DICOM ultrasound region boxes (x, y, w, h), for the field of view


# --------------------------------------------------------------------------- header probe

def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    raise ValueError("no SOF marker")


MAX_TIFF_PAGES = 100_000      # pages followed in a TIFF's chain of image directories (a loop stops earlier)
MAX_TIFF_ENTRIES = 1 << 20    # directory entries read in all (about 0.5 s of parsing at worst)
PAGES_AT_ONCE = 16            # later TIFF pages decoded together (StillPages._page)


def _tiff_pages(data: bytes, limit: int = MAX_TIFF_PAGES) -> tuple[list[tuple[int, int, int]], bool]:
    """(directory index, width, height) of each full-resolution page of a TIFF, in file order (the
    first `limit` of them), and whether the chain of directories is damaged after the last of them.

    Follows the chain of image file directories (IFDs); a directory marked as a reduced-resolution
    copy (NewSubfileType bit 0: a thumbnail or preview) is not a page. The directory index is what
    OpenCV counts pages by. ValueError when the first directory has no size; a chain that breaks
    after a good directory (a file cut short) ends the list there, flagged. At most MAX_TIFF_ENTRIES
    directory entries are read in all, so a hostile chain of overlapping directories stays cheap.
    """
    end = "<" if data[:2] == b"II" else ">"
    big = data[2:4] == (b"\x2b\x00" if end == "<" else b"\x00\x2b")          # BigTIFF
    off = struct.unpack(end + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    pages, seen, budget, damaged = [], set(), MAX_TIFF_ENTRIES, False
    for index in range(MAX_TIFF_PAGES):
        if off == 0 or off in seen or len(pages) >= limit:
            break
        seen.add(off)
        try:
            if off >= len(data):
                raise struct.error("directory beyond the end of the file")
            count = struct.unpack(end + ("Q" if big else "H"), data[off:off + (8 if big else 2)])[0]
            base, entry, vals = off + (8 if big else 2), (20 if big else 12), {}
            budget -= min(count, 4096)
            if budget < 0:
                if not pages:
                    raise ValueError("too many directory entries")
                damaged = True
                break
            for k in range(min(count, 4096)):
                e = base + k * entry
                tag, typ = struct.unpack(end + "HH", data[e:e + 4])
                if tag in (254, 256, 257):
                    fmt = {3: "H", 4: "I", 16: "Q"}.get(typ, "I")
                    at = e + (12 if big else 8)
                    vals[tag] = struct.unpack(end + fmt, data[at:at + struct.calcsize(fmt)])[0]
            link = base + min(count, 4096) * entry
            off = struct.unpack(end + ("Q" if big else "I"), data[link:link + (8 if big else 4)])[0]
        except struct.error:
            if not pages:
                raise
            damaged = True
            break
        if 256 not in vals or 257 not in vals:
            if not pages:
                raise ValueError("no ImageWidth/ImageLength tags")
            damaged = True
            break
        if not vals.get(254, 0) & 1:
            pages.append((index, vals[256], vals[257]))
    if not pages:
        raise ValueError("no full-resolution page")
    return pages, damaged


def _tiff_size(data: bytes) -> tuple[int, int]:
    _, w, h = _tiff_pages(data, limit=1)[0][0]
    return w, h


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ValueError("unknown WebP chunk")


def _webp_frames(data: bytes, name: str) -> int:
    """How many frames an animated WebP holds (Pillow counts them); Undecodable when it cannot."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return max(1, int(getattr(im, "n_frames", 1)))
    except (OSError, ValueError) as exc:
        raise Undecodable(f"cannot read this animated WebP ({exc})", path=name, hint="export the image again") from exc


def _webp_frame(data: bytes, index: int) -> np.ndarray | None:
    """Frame `index` of an animated WebP as shown (composited on its canvas), BGR or BGRA; None when broken."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(index)
            rgba = np.asarray(im.convert("RGBA"))
    except (OSError, ValueError, EOFError):
        return None
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)


# the value representations a DICOM data element can have (PS3.5 6.2): how an explicit-VR data set starts
_DICOM_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
                       b"UR US UT UV".split())


def raw_dicom_dataset(head: bytes) -> bool:
    """A DICOM data set written without the 128-byte preamble and 'DICM' (older exports, some PACS tools):
    it starts with a group 0002 or 0008 element (little endian), explicit VR (two VR letters) or implicit
    VR (a short length)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x00FF:
        return False
    return head[4:6] in _DICOM_VRS or struct.unpack("<I", head[4:8])[0] <= 1024


def sniff(data: bytes, name: str = "") -> str | None:
    """File type from magic bytes: png | jpeg | ... | dicom, or None. A .dcm/.dicom name means DICOM when
    the bytes are no image's (a damaged DICOM gets the DICOM reader's message; a JPEG named .dcm is read)."""
    if data[128:132] == b"DICM":
        return "dicom"                  # first: a DICOM preamble may hold a TIFF header
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if raw_dicom_dataset(data) or Path(name).suffix.lower() in DICOM_SUFFIXES:
        return "dicom"
    return None


def video_container(head: bytes) -> str | None:
    """The video container a file's first bytes say it is (mp4 | mkv | avi | mpegts | mpegps | flv | ogg |
    asf), or None: a video is read whatever its name (`clip.3gp`, `IM0001`, a recorder's `.dat`)."""
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "mp4"                   # MP4, MOV, 3GP, M4V (QuickTime atoms)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "mkv"                   # Matroska, WebM
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpegps"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"                   # WMV
    return None


def is_video(path: str | Path) -> bool:
    """A video file: by its name (VIDEO_SUFFIXES), else by its first bytes (`video_container`)."""
    path = Path(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return video_container(fh.read(512)) is not None
    except OSError:
        return False


def probe(data: bytes, name: str = "") -> tuple[str, int, int]:
    """(kind, width, height) from a file's first bytes; DICOM gives (dicom, 0, 0) (its reader checks it).

    UnsupportedInput for an unknown type, Undecodable for a damaged header."""
    kind = sniff(data, name)
    if kind is None:
        raise UnsupportedInput(f"not a supported image type: not a {ACCEPTED} file", path=name or None,
                               hint=f"pass {ACCEPTED} (Part 10) files")
    try:
        if kind == "png":
            if data[12:16] != b"IHDR":
                raise ValueError("no IHDR chunk")
            w, h = struct.unpack(">II", data[16:24])
        elif kind == "bmp":
            w, h = (abs(v) for v in struct.unpack("<ii", data[18:26]))
        else:
            w, h = {"jpeg": _jpeg_size, "tiff": _tiff_size, "webp": _webp_size,
                    "dicom": lambda _: (0, 0)}[kind](data)
    except (ValueError, struct.error, IndexError) as exc:
        raise Undecodable(f"damaged {kind.upper()} header", path=name or None,
                          hint="re-export the image; it was cut short or corrupted") from exc
    return kind, w, h


def check_pixels(kind: str, width: int, height: int, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """The one decode-bomb limit: InputTooLarge above `max_pixels` per frame, Undecodable for no pixels."""
    if width <= 0 or height <= 0:
        raise Undecodable(f"{kind.upper()} header says {width}x{height} pixels", path=name,
                          hint="the file is damaged; re-export it")
    if width * height > max_pixels:
        raise InputTooLarge(f"{kind.upper()} of {width}x{height} pixels is over the limit of "
                            f"{max_pixels / 1e6:g} Mpx (a decompression bomb?)", path=name,
                            hint="downscale the image; ultrasound screens are below 10 Mpx")


# --------------------------------------------------------------------------- reading

def read_bytes(path: str | Path) -> bytes:
    """A regular file's bytes; InputError naming the real cause (missing, not a file, permission, empty)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path, hint="check the path")
    if not path.is_file():
        raise InputError("not a regular file (a folder, FIFO, socket or device)", path=path, hint="pass an image file")
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise InputError("permission denied", path=path, hint="check the file's permissions (chmod / owner)") from exc
    except OSError as exc:
        raise InputError(f"cannot read file ({exc.strerror})", path=path, hint="check the disk and the path") from exc
    if not data:
        raise Undecodable("empty file (0 bytes)", path=path, hint="copy the file again")
    return data


# libjpeg's messages for damaged entropy-coded data (warnings that OpenCV and Pillow let pass)
_JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end", "Bogus", "Unsupported marker", "Invalid", "Inconsistent",
                "Huffman")


def check_jpeg_data(data: bytes, name: str) -> None:
    """Undecodable when libjpeg-turbo, decoding strictly (simplejpeg: its warnings raised), finds the JPEG's
    data damaged. OpenCV and Pillow decode such a file with a warning on stderr only, the damaged part as
    plausible gray blocks. Other refusals (e.g. 12-bit data it does not read) are left to OpenCV's decode;
    without simplejpeg (a hand-trimmed install) nothing is checked."""
    try:
        import simplejpeg
    except ImportError:
        return
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True, min_factor=8)
    except ValueError as exc:
        text = " ".join(str(exc).split())
        if any(k in text for k in _JPEG_DAMAGE):
            raise Undecodable(f"damaged JPEG data ({text})", path=name,
                              hint="copy or export the image again") from exc


# the IEND chunk whole (length 0, type, its fixed CRC): a PNG is complete when it holds it, even with
# bytes after it (a file padded by a transfer tool); 12 bytes do not occur in compressed data by chance
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation (1-8; 1 = as stored) of a JPEG's bytes, 1 when it has none or it is unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:          # noqa: BLE001 - a damaged EXIF block: the image is shown as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """An image turned as its EXIF Orientation says a viewer shows it (what cv2.imread does): 2 mirror,
    3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


class StillPages:
    """The pages of one still image file's bytes: len() pages (several for a multi-page TIFF, else 1);
    [i] -> Decoded, decoded when asked for (the header is parsed once). Typed InputError when unusable."""

    def __init__(self, data: bytes, name: str = "upload", *, max_pixels: int = MAX_PIXELS) -> None:
        if not data:
            raise Undecodable("empty file (0 bytes)", path=name, hint="copy the file again")
        self.data, self.name, self.max_pixels = data, name, max_pixels
        self.kind, w, h = probe(data, name)
        # a multi-page TIFF: one frame a page; `damaged`: its chain of pages breaks after the last one listed
        self.pages, self.damaged = _tiff_pages(data) if self.kind == "tiff" else ([(0, w, h)], False)
        self.animated = self.kind == "webp" and data[12:16] == b"VP8X" and bool(data[20] & 0x02)   # VP8X animation flag
        if self.animated:           # an animated WebP: one frame a frame (OpenCV reads only the first)
            self.pages = [(i, w, h) for i in range(_webp_frames(data, name))]
        self._decoded: dict[int, np.ndarray] = {}      # later TIFF pages decoded ahead (_page)

    def __len__(self) -> int:
        return len(self.pages)

    def __getitem__(self, frame_index: int) -> Decoded:
        data, name, kind, n = self.data, self.name, self.kind, len(self.pages)
        if not 0 <= frame_index < n:
            if self.damaged and frame_index >= n:
                raise Undecodable(f"frame {frame_index} cannot be read: {self.damage()}", path=name,
                                  hint="copy or export the file again")
            raise NoSuchFrame(f"frame {frame_index} does not exist: this {kind.upper()} has {n} "
                              f"{'page' if kind == 'tiff' else 'frame'}{'s' if n > 1 else ''}", path=name,
                              hint=f"use a frame from 0 to {n - 1}")
        directory, w, h = self.pages[frame_index]
        check_pixels(kind, w, h, name, self.max_pixels)
        if (kind == "png" and PNG_END not in data) or (kind == "jpeg" and b"\xff\xd9" not in data[-64:]):
            raise Undecodable(f"truncated {kind.upper()} file (no end marker)", path=name,
                              hint="copy or export the image again")
        if kind == "jpeg":
            check_jpeg_data(data, name)
        if self.animated:
            image = _webp_frame(data, frame_index)
        elif directory == 0:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        else:
            image = self._page(frame_index)
        if image is None or image.size == 0:
            page = f" of page {frame_index + 1} of {n}" if n > 1 or self.damaged else ""
            raise Undecodable(f"cannot decode {kind.upper()} data{page} (corrupt file?)", path=name,
                              hint="copy or export the image again")
        if image.shape[:2] != (h, w):
            raise Undecodable(f"{kind.upper()} decoded to {image.shape[1]}x{image.shape[0]}, header says {w}x{h}",
                              path=name, hint="the file is damaged; re-export it")
        if kind == "jpeg":
            image = upright(image, exif_orientation(data))
        return Decoded(image, kind, n, frame_index)

    def damage(self) -> str:
        """What is wrong with a TIFF whose chain of pages breaks (`damaged`), in words."""
        n = len(self.pages)
        return f"the TIFF is damaged after page {n} (cut short?): its later pages cannot be found"

    def _page(self, frame_index: int) -> np.ndarray | None:
        """A later TIFF page. OpenCV finds page k by walking the k directories before it, so pages are
        decoded a few at a time (up to PAGES_AT_ONCE consecutive ones of at most max_pixels each, about
        64 Mpx in all) and kept until asked for: reading every page stays linear in their number."""
        directory = self.pages[frame_index][0]
        if directory not in self._decoded:
            end, total = directory + 1, self.pages[frame_index][1] * self.pages[frame_index][2]
            for d, w, h in self.pages[frame_index + 1:frame_index + PAGES_AT_ONCE]:
                if d != end or w * h > self.max_pixels or total + w * h > 64_000_000:
                    break
                end, total = d + 1, total + w * h
            ok, mats = cv2.imdecodemulti(np.frombuffer(self.data, np.uint8), cv2.IMREAD_UNCHANGED, range=(directory, end))
            self._decoded = {directory + k: m for k, m in enumerate(mats)} if ok else {}
        return self._decoded.pop(directory, None)


def read_image_bytes(data: bytes, name: str = "upload", *, frame_index: int = 0, max_pixels: int = MAX_PIXELS,
                     allow_any_modality: bool = False) -> Decoded:
    """Bytes of one image or DICOM file -> one decoded frame (no temporary file). Typed InputError when unusable."""
    if not isinstance(data, bytes):
        try:                        # bytearray, memoryview, a numpy buffer: any bytes-like object
            data = memoryview(data).cast("B").tobytes()
        except TypeError:
            raise InputError(f"image data is a {type(data).__name__}, not bytes", path=name,
                             hint="pass the file's bytes (open(path, 'rb').read()), or use read_image(path)") from None
    if data and sniff(data, name) == "dicom":
        from usedge.runtime.dicom import DicomFile

        d = DicomFile(data, name=name, max_pixels=max_pixels, allow_any_modality=allow_any_modality)
        return Decoded(d.frame(frame_index), "dicom", d.n_frames, frame_index, d.raw_regions or None)
    return StillPages(data, name, max_pixels=max_pixels)[frame_index]


def read_file(path: str | Path, *, frame_index: int = 0, max_pixels: int = MAX_PIXELS,
              allow_any_modality: bool = False) -> Decoded:
    """An image or DICOM file -> one decoded frame and, for DICOM, its raw ultrasound region boxes."""
    return read_image_bytes(read_bytes(path), str(path), frame_index=frame_index, max_pixels=max_pixels,
                            allow_any_modality=allow_any_modality)


def read_pages(path: str | Path, *, every: int = 1, allow_any_modality: bool = False) -> Iterator[Decoded]:
    """Every `every`-th page of a still image file, lazily (a multi-page TIFF has several; other stills
    one): the file is read once, each page decoded when it is asked for. A DICOM gives its first frame
    (its frames: usedge.runtime.dicom)."""
    data = read_bytes(path)
    if sniff(data, str(path)) == "dicom":
        yield read_image_bytes(data, str(path), allow_any_modality=allow_any_modality)
        return
    pages = StillPages(data, str(path))
    for i in range(0, len(pages), every):
        yield pages[i]
    if pages.damaged:       # the pages before were given; the file is still reported, as a cut video is
        raise Undecodable(f"{pages.damage()} ({len(pages)} read)", path=path, hint="copy or export the file again")


def read_image(path: str | Path, *, frame_index: int = 0, allow_any_modality: bool = False) -> np.ndarray:
    """An image or DICOM file -> one frame (uint8/uint16; gray, BGR or BGRA as stored). InputError when unusable."""
    return read_file(path, frame_index=frame_index, allow_any_modality=allow_any_modality).frame


# --------------------------------------------------------------------------- inputs

class Skipped(NamedTuple):
    """A thing under the inputs that is not read: where, and why (with what to do); str() is one line."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


#: folders that hold no scans of their own (casefolded): NAS thumbnails and recycle bins, a Mac unzip's metadata
LITTER_FOLDERS = frozenset({"@eadir", "@recycle", "#recycle", "#snapshot", "@recently-snapshot", "__macosx",
                            "$recycle.bin", "system volume information"})


def expand_inputs(items: list[str | Path], suffixes: frozenset[str] = INPUT_SUFFIXES,
                  ignored: list[Path] | None = None) -> tuple[list[Path], list[Skipped]]:
    """Files named, and every regular file under folders named whose suffix is in `suffixes` or whose
    bytes are DICOM's (a file named by its UID or `IM00001`; a DICOMDIR, hidden files, hidden folders
    and LITTER_FOLDERS are left out), recursive and sorted. `notes`: one line per thing skipped, for the caller to
    print: a symlinked or unreadable folder, a FIFO/socket/device or broken link. `ignored`: gets the
    regular files under the folders left out for their type (other_types says them in one line)."""
    from usedge.runtime.dicom import is_dicom

    files: list[Path] = []
    notes: list[Skipped] = []
    for item in map(Path, items):
        if not item.is_dir():
            if item.exists() and not item.is_file():
                notes.append(Skipped(str(item), "not a regular file (FIFO, socket or device): pass an image file"))
            else:
                files.append(item)          # a missing file is reported when read
            continue
        found = []
        for top, dirs, names in os.walk(item, onerror=lambda e: notes.append(
                Skipped(str(e.filename), f"unreadable folder ({e.strerror}): check its permissions"))):
            # hidden (.git, .Trash, a tool's own), and what NAS boxes, unzips and Windows drives add: a Synology
            # @eaDir holds shrunken copies of each image (a test image's copy would be trained on)
            dirs[:] = [d for d in dirs if not d.startswith(".") and d.casefold() not in LITTER_FOLDERS]
            for d in dirs:
                if os.path.islink(os.path.join(top, d)):
                    notes.append(Skipped(os.path.join(top, d), "symlinked folder not followed: pass its real path"))
            for n in names:
                # a CD/USB export's index of its files (DICOMDIR), hidden files (macOS `._x.png` copies of a
                # file's metadata on a USB stick, `.DS_Store`): not images
                if n.upper() == "DICOMDIR" or n.startswith("."):
                    continue
                p = Path(top, n)
                wanted = p.suffix.lower() in suffixes
                if not p.is_file():
                    if wanted:
                        notes.append(Skipped(str(p), "not a regular file (FIFO, socket, device or broken link): "
                                                     "fix or remove the link"))
                elif wanted or is_dicom(p) or is_video(p):     # DICOM and video by their bytes too: PACS
                    # tools name files by UID (1.2.840...), recorders use their own extensions
                    found.append(p)
                elif ignored is not None:
                    ignored.append(p)
        files += sorted(found)
    return files, sorted(notes)


def other_types(ignored: list[Path]) -> list[str]:
    """One line for the files of other types left out of folders (by suffix, most first), or none."""
    if not ignored:
        return []
    counts: dict[str, int] = {}
    for p in ignored:
        counts[p.suffix.lower() or "no suffix"] = counts.get(p.suffix.lower() or "no suffix", 0) + 1
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return [f"left out {len(ignored)} file(s) of other types in the folders ({kinds}); name a file to try it"]


def file_identity(path: str | Path) -> tuple[int, int] | str:
    """What makes two names one file: its device and inode (a symbolic or hard link, another path to
    it), or its real path when it cannot be read (a missing file)."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def drop_repeats(files: list[Path]) -> tuple[list[Path], list[str]]:
    """`files` with each file once (the same file named twice, through a folder and by name, or by
    another path or a symbolic or hard link: the first stays), and one line per repeated file for the
    caller to print."""
    first: dict = {}
    times: dict = {}
    other: dict = {}
    for f in files:
        key = file_identity(f)
        if key in first:
            times[key] += 1
            if str(f) != str(first[key]) and str(f) not in other[key]:
                other[key].append(str(f))
        else:
            first[key], times[key], other[key] = f, 1, []
    lines = [f"{first[k]}: named {n} times in the inputs" + (f" (also as {', '.join(other[k])})" if other[k] else "")
             + ": read once" for k, n in times.items() if n > 1]
    return list(first.values()), lines


def drop_lesion_masks(items: list[str | Path], files: list[Path]) -> tuple[list[Path], list[str]]:
    """`files` without the lesion masks that a folder's manifest.csv lists (its mask_path column: a
    usedge data set, e.g. `usedge synth cohort`'s masks/), so that `usedge infer DATA` classifies the
    images only. `lines`: one per manifest that removed any, for the caller to print. A folder without
    a manifest.csv (or one without that column) removes nothing."""
    masks: set[Path] = set()
    lines: list[str] = []
    resolved: dict[Path, Path] = {}          # each input file resolved once, and only when a manifest is read
    for item in map(Path, items):
        manifest = item / "manifest.csv"
        if not (item.is_dir() and manifest.is_file()):
            continue
        try:
            with open(manifest, newline="", encoding="utf-8") as fh:
                listed = {(item / r["mask_path"].strip()).resolve() for r in csv.DictReader(fh)
                          if (r.get("mask_path") or "").strip()}
        except (OSError, UnicodeDecodeError, csv.Error, AttributeError):
            continue                    # not a usedge manifest: every file stays an input
        if not resolved:
            resolved = {f: f.resolve() for f in files}
        found = set(resolved.values()) & listed
        if found:
            masks |= found
            lines.append(f"{len(found)} lesion masks listed in {manifest} left out (they are not scans)")
    if not masks:
        return files, lines
    return [f for f in files if resolved[f] not in masks], lines
