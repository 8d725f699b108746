"""DICOM ultrasound files -> frames (BGR or gray) + ultrasound regions, without patient data.

    d = open_dicom(path)
    d.n_frames, d.fps, d.shape, d.regions          # technical facts only
    d.frame(i)  -> uint8 H x W (gray) or H x W x 3 (BGR, like OpenCV), scaled by its bit depth
    d.frames()  -> iterator of (index, frame)
    patient_head(path) -> PatientHead               a pseudonym of the PatientID and whether the file holds an
                                                    image (a data set's patients; reports left out)

Nothing a DicomFile returns, logs or raises carries patient data (names, IDs, birth dates, study
dates, institution): the dataset is kept private and only the technical attributes listed in
`DicomFile.describe()` are read out; patient_head gives a hash of the PatientID, never the ID. Pixel
data is decoded one frame at a time.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from usedge.errors import InputError, NoSuchFrame, Undecodable, UnsupportedInput
from usedge.fileio import read_head
from usedge.runtime.formats import (DICOM_SUFFIXES, MAX_PIXELS, check_jpeg_data, check_pixels,
                                    raw_dicom_dataset, read_bytes, sniff)
from usedge.runtime.pixels import label_free_top, standard_depth

# transfer syntax UID -> (name, packages that decode it with pydicom 3)
_DECODERS = {
    "1.2.840.10008.1.2.4.50": ("JPEG Baseline", "pillow", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.51": ("JPEG Extended", "pillow", "pylibjpeg pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.57": ("JPEG Lossless", "pylibjpeg pylibjpeg-libjpeg", "python-gdcm"),
    "1.2.840.10008.1.2.4.70": ("JPEG Lossless SV1", "pylibjpeg pylibjpeg-libjpeg", "python-gdcm"),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS Lossless", "pylibjpeg pylibjpeg-libjpeg", "pyjpegls"),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS Near-Lossless", "pylibjpeg pylibjpeg-libjpeg", "pyjpegls"),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 Lossless", "pylibjpeg pylibjpeg-openjpeg", "pillow"),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", "pylibjpeg pylibjpeg-openjpeg", "pillow"),
    "1.2.840.10008.1.2.4.201": ("HTJ2K Lossless", "pylibjpeg pylibjpeg-openjpeg", ""),
    "1.2.840.10008.1.2.4.202": ("HTJ2K Lossless RPCL", "pylibjpeg pylibjpeg-openjpeg", ""),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", "pylibjpeg pylibjpeg-openjpeg", ""),
    "1.2.840.10008.1.2.5": ("RLE Lossless", "pylibjpeg pylibjpeg-rle", ""),
}


DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"      # Media Storage Directory Storage: a DICOMDIR
MIN_FPS, MAX_FPS = 0.5, 500.0                     # a cine's header rate outside these is not used

# JPEG Baseline and Extended: every frame's data is checked strictly by libjpeg-turbo first
# (formats.check_jpeg_data; data it does not read, e.g. 12-bit, is left to pydicom's decoders)
STRICT_JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})


def is_dicom(path: str | Path) -> bool:
    """True for a regular file whose first bytes are DICOM's (the 'DICM' marker at byte 128, or a data set
    without the preamble), or a .dcm/.dicom name whose bytes are no image's (formats.sniff: a JPEG named
    .dcm is an image); a missing .dcm file too (its reader says it is missing); a FIFO is never opened."""
    path = Path(path)
    if not path.is_file():
        return path.suffix.lower() in DICOM_SUFFIXES and not path.exists()
    return sniff(read_head(path, 132), path.name) == "dicom"


PATIENT_ID = 0x00100020          # (0010,0020) PatientID
ROWS, COLUMNS = 0x00280010, 0x00280011   # Image Pixel module: a DICOM without them holds no image
PATIENT_PREFIX = "dicom:"        # a patient named by patient_head (a data set's other patient names are paths)


def pseudonym(value: str) -> str:
    """PATIENT_PREFIX + the first 12 hex digits of SHA-256("usedge PatientID" + NUL + value) (UTF-8)."""
    import hashlib

    return PATIENT_PREFIX + hashlib.sha256(f"usedge PatientID\0{value}".encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class PatientHead:
    """What a data set needs from a DICOM file's header: whose it is, and whether it holds an image."""

    key: str | None = None      # pseudonym(PatientID stripped); None: empty, missing or unreadable
    folded: str | None = None   # pseudonym of fold(PatientID): spellings of one ID share it (patient_head)
    image: bool = True          # False: no Rows/Columns (a structured report, presentation state, key-object note)


def patient_head(path: str | Path, fold: Callable[[str], str] = str.casefold) -> PatientHead | None:
    """None for a file that is not DICOM (is_dicom, from the same open). Else read the header up to its Image
    Pixel module (never the pixel data): the patient it names,
    as a pseudonym (so one patient's files can be grouped while the ID itself is never returned, printed or
    written: a data set's patient names go into folds.csv and notes), the pseudonym of `fold(ID)` (the data
    set's own name comparison: two spellings of one ID), and whether it holds an image. A
    header that cannot be read (a truncated or damaged file) gives PatientHead(): no patient, and taken for
    an image, whose reader reports the damage later."""
    import warnings

    from pydicom.filereader import read_partial

    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError:     # as is_dicom: unreadable, so DICOM only by its name
        return PatientHead() if sniff(b"", path.name) == "dicom" else None
    try:
        with fh, warnings.catch_warnings():     # pydicom's value warnings can quote the value
            warnings.simplefilter("ignore")
            head = fh.read(132)
            if sniff(head, path.name) != "dicom":
                return None
            fh.seek(0)
            past = []       # a tag after Columns was reached: the header is whole up to the Image Pixel module

            def stop(tag, vr, length) -> bool:
                past.append(tag > COLUMNS)
                return past[-1]

            ds = read_partial(fh, stop_when=stop, specific_tags=[PATIENT_ID, ROWS, COLUMNS],
                              force=head[128:132] != b"DICM" and raw_dicom_dataset(head))
            value = str(ds.get("PatientID", "") or "").strip()
            # no Rows/Columns in a header read past them: no image; a header cut short: unknown, read as an image
            image = ("Rows" in ds and "Columns" in ds) or not (past and past[-1])
    except Exception:  # noqa: BLE001 - pydicom raises many kinds on damaged files: nothing read
        return PatientHead()
    if not value:
        return PatientHead(image=image)
    return PatientHead(key=pseudonym(value), folded=pseudonym(fold(value)), image=image)


@dataclass(frozen=True)
class UltrasoundRegion:
    """One SequenceOfUltrasoundRegions item: box (x, y, w, h, pixels) and what it holds."""

    box: tuple[int, int, int, int]
    spatial_format: int          # 1 = 2D (B-mode image), 2 = M-mode, 3 = spectral, 4 = wave form ...
    data_type: int               # 1 = tissue, 2 = colour flow, 3 = PW spectral ...

    @property
    def is_image(self) -> bool:
        return self.spatial_format == 1 and self.data_type in (1, 2, 0)


def _missing_decoder_hint(uid: str, exc: Exception) -> str:
    from pydicom.uid import UID

    if uid and not UID(uid).is_transfer_syntax:
        return f"transfer syntax {uid!r} is not a known one (a damaged header?): export the file again"
    name, first, other = _DECODERS.get(uid, (f"transfer syntax {uid}", "", ""))
    if first:
        return f"{name} pixel data needs a decoder: pip install {first}" + (f" (or: pip install {other})" if other else "")
    needs = "; ".join(re.findall(r"requires ([^\n]+)", str(exc))) or "a pydicom pixel-data plugin"
    return f"{name} pixel data needs a decoder: install {needs}"


class DicomFile:
    """An opened DICOM file: technical facts and frames, decoded lazily. Holds no patient data for display.

    `source`: a path, or the file's bytes with `name` for messages (an upload). Refuses a Modality
    other than US (ultrasound) unless `allow_any_modality`, and frames over `max_pixels`.
    """

    def __init__(self, source: str | Path | bytes, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
                 allow_any_modality: bool = False):
        import io

        import pydicom
        from pydicom.errors import InvalidDicomError

        self.path = Path(name if name is not None else source)
        data = source if isinstance(source, bytes) else read_bytes(self.path)
        if not data:
            raise Undecodable("empty file (0 bytes)", path=self.path, hint="copy the DICOM file again")
        try:
            # force: a data set written without the preamble and 'DICM' (formats.raw_dicom_dataset)
            self._ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM" and raw_dicom_dataset(data))
        except InvalidDicomError as exc:
            raise Undecodable("not a DICOM file", path=self.path,
                              hint="pass a DICOM Part 10 file (.dcm), or convert it to PNG") from exc
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged files
            raise Undecodable(f"cannot read DICOM header ({type(exc).__name__})", path=self.path,
                              hint="the file is truncated or damaged; export it again from the scanner/PACS") from exc
        ds = self._ds
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) and getattr(ds, "original_encoding", None):
            # a data set without its file meta (no preamble, no group 0002): the encoding pydicom read it in
            from pydicom.dataset import FileMetaDataset
            from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

            implicit, little = ds.original_encoding
            if not hasattr(ds, "file_meta"):
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
            raise InputError("a DICOMDIR: the index of a DICOM export (CD, USB), not an image", path=self.path,
                             hint="pass the images it lists (or the folder that holds it: the DICOMDIR is left out)")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            if self._truncated(len(data)):
                raise Undecodable("truncated DICOM file (it ends inside an element)", path=self.path,
                                  hint="copy or export the file again from the scanner/PACS")
            raise InputError("DICOM file has no image (no pixel data)", path=self.path,
                             hint="pass an ultrasound image or cine loop, not a report or structured document")
        self.modality = str(ds.get("Modality", "") or "").strip().upper()
        if self.modality not in ("", "US") and not allow_any_modality:
            raise UnsupportedInput(f"DICOM Modality is {self.modality}, not US (ultrasound)", path=self.path,
                                   hint="usedge classifies ultrasound; `usedge infer` and `usedge crop` take "
                                        "--any-modality to run it anyway")
        try:
            self.rows, self.cols = int(ds.Rows), int(ds.Columns)
            self.samples = int(ds.get("SamplesPerPixel", 1))
            self.bits_allocated = int(ds.get("BitsAllocated", 8))
            self.bits_stored = int(ds.get("BitsStored", self.bits_allocated))
            self.signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
            self.n_frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        except Exception as exc:  # noqa: BLE001 - a damaged element raises whatever pydicom's parser raises
            raise Undecodable("DICOM image header is incomplete or damaged (Rows, Columns, pixel format)",
                              path=self.path, hint="the file is damaged; export it again") from exc
        check_pixels("dicom", self.cols, self.rows, str(self.path), max_pixels)
        try:
            self.photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            if self.samples > 1 and "PlanarConfiguration" not in ds:
                ds.PlanarConfiguration = 0      # colour pixel by pixel, as viewers assume when a writer left it out
            self.transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
            self.fps = self._frame_rate()
            self._times: list[float] | None = None     # frame_time_s, from FrameTimeVector
            self._top: int | None = None               # _cine_top, found once
            self._range: tuple[float, float] | None = None   # _value_range of a cine, found once
            self.all_regions = self._read_regions()
        except Undecodable:
            raise
        except Exception as exc:  # noqa: BLE001 - as above
            raise Undecodable(f"DICOM header is damaged ({type(exc).__name__})", path=self.path,
                              hint="the file is damaged; export it again") from exc
        self._check_pixel_length()

    # -- header facts
    def _check_pixel_length(self) -> None:
        """Native (not compressed) pixel data must be as long as the header says (Rows x Columns x
        SamplesPerPixel x BitsAllocated x NumberOfFrames). pydicom drops any excess as padding, so a
        header that understates the image (Rows too small, SamplesPerPixel 1 on colour data: a cut or
        garbled image; or NumberOfFrames too small: the lengths cannot tell which) would be read with a
        warning only: refused here when the excess is a frame or more."""
        from pydicom.pixels.utils import get_expected_length
        from pydicom.uid import UID

        syntax = UID(self.transfer_syntax) if self.transfer_syntax else None
        # compressed data has no fixed length; an unknown (damaged) syntax is left to the decoder's error
        if "PixelData" not in self._ds or (syntax is not None and (not syntax.is_transfer_syntax or syntax.is_encapsulated)):
            return
        try:
            expected = int(get_expected_length(self._ds, "bytes"))
            actual = len(self._ds.PixelData)
        except Exception:  # noqa: BLE001 - a header pydicom cannot size: left to the decoder's own errors
            return
        if expected <= 0:       # NumberOfFrames (or Rows, Columns) below 1
            raise Undecodable(f"the header's image size is not a size ({self.cols}x{self.rows}, NumberOfFrames "
                              f"{self._ds.get('NumberOfFrames', 1)!s})", path=self.path,
                              hint="the header was damaged or edited; export the file again from the scanner/PACS")
        frame = max(1, expected // self.n_frames)
        if actual < expected:
            whole = f"{actual // frame} whole frame(s) of the {self.n_frames} it declares" if self.n_frames > 1 else "part of the image"
            raise Undecodable(f"pixel data is {actual} bytes, less than the {expected} the header implies ({whole}): "
                              "the file is truncated or its header is wrong", path=self.path,
                              hint="copy or export the file again from the scanner/PACS")
        if actual - expected - expected % 2 >= frame:      # an odd length is padded by one byte (PS3.5 8.1.1)
            raise Undecodable(f"pixel data is {actual} bytes but the header ({self.cols}x{self.rows}, "
                              f"{self.samples} sample(s) of {self.bits_allocated} bits, {self.n_frames} frame(s)) "
                              f"implies {expected}: header and pixels disagree", path=self.path,
                              hint="the header was damaged or edited; export the file again from the scanner/PACS")

    def _truncated(self, size: int) -> bool:
        """The data ends inside the last element pydicom found (or before the first): a file cut short."""
        tags = list(self._ds.keys())
        if not tags:
            return True
        raw = self._ds.get_item(tags[-1])
        length = getattr(raw, "length", 0)
        return getattr(raw, "value_tell", 0) + (0 if length == 0xFFFFFFFF else length) > size

    def _frame_rate(self) -> float | None:
        """Frames per second from FrameTime, FrameTimeVector, CineRate or RecommendedDisplayFrameRate; None
        when none gives a plausible rate (MIN_FPS..MAX_FPS: a FrameTime of 0.001 ms or 100 s is a damaged or
        wrong header, and pacing by it would skip every frame or wait minutes per frame)."""
        fps = self._header_rate()
        return fps if fps is not None and MIN_FPS <= fps <= MAX_FPS else None

    def _header_rate(self) -> float | None:
        ds = self._ds
        try:
            if ds.get("FrameTime") and not _timed_by_vector(ds):
                ft = float(ds.FrameTime)            # ms between frames
                if ft > 0:
                    return 1000.0 / ft
            if ds.get("FrameTimeVector"):
                v = [float(t) for t in ds.FrameTimeVector][1:]   # first entry is 0 by definition
                if v and np.mean(v) > 0:
                    return 1000.0 / float(np.mean(v))
            for key in ("CineRate", "RecommendedDisplayFrameRate"):
                if ds.get(key):
                    r = float(ds.get(key))
                    if r > 0:
                        return r
        except (TypeError, ValueError):
            return None
        return None

    def frame_time_s(self, index: int) -> float | None:
        """Seconds from the cine's first frame to frame `index`: the FrameTimeVector's running sum when the
        header times its frames by it (FrameIncrementPointer names it, or it is there without FrameTime),
        else index / fps; None for a single frame, a cine without a plausible rate (`fps` None), or a
        vector that is the timing but not one non-negative increment per frame (no times are invented)."""
        if self.n_frames == 1 or self.fps is None:
            return None
        if self._times is None:
            self._times = []
            ds = self._ds
            if _timed_by_vector(ds):
                try:
                    v = [float(t) for t in ds.FrameTimeVector]
                except (TypeError, ValueError):
                    v = []
                if len(v) != self.n_frames or not all(math.isfinite(t) and t >= 0 for t in v):
                    self._times = None
                    return None
                self._times = [t / 1000.0 for t in itertools.accumulate(v[1:], initial=0.0)]
        return self._times[index] if self._times else index / self.fps

    def _read_regions(self) -> list[UltrasoundRegion]:
        out = []
        for item in self._ds.get("SequenceOfUltrasoundRegions", []) or []:
            try:
                x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
                x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
            except (AttributeError, TypeError, ValueError):
                continue
            out.append(UltrasoundRegion(box=(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
                                        spatial_format=int(item.get("RegionSpatialFormat", 0) or 0),
                                        data_type=int(item.get("RegionDataType", 0) or 0)))
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def regions(self) -> list[tuple[int, int, int, int]]:
        """Boxes of the B-mode image regions that fit this file's pixel grid; [] when none fit.

        Boxes that leave the image (measured before the scanner downscaled its screen) are
        dropped all together, so callers fall back to detection.
        """
        from usedge.runtime.fov import validate_regions

        return validate_regions(self.raw_regions, self.shape) or []

    @property
    def raw_regions(self) -> list[tuple[int, int, int, int]]:
        """Every B-mode region box as written in the file, checked or not; a box inside another (the colour
        flow box a scanner declares within its B-mode image) is part of that image, not a view of its own."""
        boxes = [r.box for r in self.all_regions if r.is_image]
        return [b for b in boxes if not any(o != b and _inside(b, o) for o in boxes)]

    def describe(self) -> dict:
        """Technical facts safe to print or log (no patient, study or institution data)."""
        return {"rows": self.rows, "columns": self.cols, "frames": self.n_frames, "fps": self.fps,
                "samples_per_pixel": self.samples, "bits_stored": self.bits_stored,
                "photometric": self.photometric, "transfer_syntax": self.transfer_syntax,
                "modality": self.modality, "regions": [list(b) for b in self.raw_regions],
                "regions_fit": bool(self.regions)}

    def __repr__(self) -> str:
        return (f"DicomFile({self.path.name!r}, {self.cols}x{self.rows}, frames={self.n_frames}, "
                f"{self.photometric}, fps={self.fps})")

    # -- pixels
    def frame(self, index: int = 0) -> np.ndarray:
        """Frame `index` as uint8: H x W gray or H x W x 3 BGR (colour/palette converted; more than 8 bits
        scaled by the bit depth, `to_uint8`; MONOCHROME1 inverted within that depth)."""
        from pydicom.pixels import apply_color_lut, pixel_array

        if not 0 <= index < self.n_frames:
            raise NoSuchFrame(f"frame {index} does not exist: the file has {self.n_frames} frame(s)", path=self.path,
                              hint=f"use a frame index from 0 to {self.n_frames - 1}")
        if self.transfer_syntax in STRICT_JPEG_SYNTAXES:
            self._check_jpeg_frame(index)
        try:
            # allow_excess_frames=False: pixel bytes beyond NumberOfFrames (padding, a bad header) are not frames
            arr = pixel_array(self._ds, index=index if self.n_frames > 1 else None, allow_excess_frames=False)
        except (RuntimeError, NotImplementedError) as exc:
            text = str(exc)
            if "not support" in text and self.transfer_syntax in _DECODERS:   # a decoder is there, but not for
                name, _, other = _DECODERS[self.transfer_syntax]                 # this variant (Pillow: 12-bit JPEG)
                raise UnsupportedInput(f"cannot decode the compressed pixel data ({_reason(exc)})", path=self.path,
                                       hint=f"the installed decoder cannot read this {name} data"
                                            + (f": pip install {other}" if other else ": convert the file to an "
                                               "uncompressed transfer syntax")) from exc
            if "raised by all available plugins" in text:   # a decoder is there and failed: damaged data
                where = f"frame {index} of {self.n_frames}" if self.n_frames > 1 else "the pixel data"
                raise Undecodable(f"cannot decode {where}: the compressed data is damaged", path=self.path,
                                  hint="export the file again from the scanner/PACS") from exc
            if "missing" in text or "plugin" in text or "decod" in text.lower():
                raise UnsupportedInput("cannot decode the compressed pixel data", path=self.path,
                                       hint=_missing_decoder_hint(self.transfer_syntax, exc)) from exc
            raise Undecodable(f"cannot decode the pixel data ({type(exc).__name__})", path=self.path,
                              hint="the file is damaged or uses an unsupported encoding; export it again") from exc
        except Exception as exc:  # noqa: BLE001 - truncated data raises ValueError, bad headers others
            raise Undecodable(f"cannot decode the pixel data ({_reason(exc)})",
                              path=self.path, hint="the file is truncated or its pixel description is damaged; "
                                                   "export it again from the scanner/PACS") from exc
        if arr.ndim == 4:              # a decoder that ignored index
            arr = arr[index]
        if self.photometric == "PALETTE COLOR":
            try:
                arr = apply_color_lut(arr, self._ds)
            except Exception as exc:  # noqa: BLE001 - a missing or damaged table: pydicom raises many kinds
                raise Undecodable(f"the palette colour table is missing or damaged ({_reason(exc)})", path=self.path,
                                  hint="export the file again (or as RGB) from the scanner/PACS") from exc
            if arr.dtype != np.uint8:  # 16-bit LUT entries
                arr = (arr >> 8).astype(np.uint8) if int(arr.max()) > 255 else arr.astype(np.uint8)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError("pixel data contains NaN or Inf", path=self.path, hint="export the image again")
        if self._needs_grey_lut(arr):         # signed, rescaled or windowed grey: as a viewer shows it
            arr = self._grey_lut(arr)
        else:
            if arr.dtype.kind in "if" and arr.dtype not in (np.uint8, np.uint16):
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            if self.photometric != "PALETTE COLOR":     # a palette's colours are 8-bit already
                arr = to_uint8(arr, self.bits_stored, self.bits_allocated, invert=self.photometric == "MONOCHROME1",
                               top=self._cine_top(arr))
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)  # pydicom gives RGB
        return np.ascontiguousarray(arr)

    def _cine_top(self, arr: np.ndarray) -> int | None:
        """The largest value of every frame of a cine whose depth the header leaves open (BitsStored =
        BitsAllocated > 8), so that one depth scales the whole loop (a dark frame stays darker than a
        bright one, as the scanner showed them); None for a still, or a header that names the depth.
        Found once, decoding each frame (frames that cannot be decoded are left out)."""
        if self.n_frames == 1 or arr.dtype.kind != "u" or arr.dtype.itemsize == 1 or self.bits_stored < self.bits_allocated:
            return None
        if self._top is None:
            self._top = max([depth_top(arr, self.bits_stored)]
                            + [depth_top(raw, self.bits_stored) for raw in self._raw_frames()])
        return self._top

    def _raw_frames(self) -> Iterator[np.ndarray]:
        """Every frame's stored values as pydicom decodes them (no LUT, no scaling), frames that cannot be
        decoded left out (their own decode reports them): what a cine-wide scale is found from, once."""
        from pydicom.pixels import pixel_array

        for i in range(self.n_frames):
            try:
                yield pixel_array(self._ds, index=i, allow_excess_frames=False)
            except Exception:  # noqa: BLE001 - a damaged frame: its own decode reports it
                continue

    def _value_range(self, x: np.ndarray) -> tuple[float, float]:
        """(min, max) of a frame after its Modality LUT, for a frame without a window; of every frame of a
        cine (found once), so a dim frame stays dimmer than a bright one, as the scanner showed them."""
        from pydicom.pixels import apply_modality_lut

        lo, hi = float(x.min()), float(x.max())
        if self.n_frames == 1:
            return lo, hi
        if self._range is None:
            for raw in self._raw_frames():
                try:
                    y = np.asarray(apply_modality_lut(raw, self._ds))
                except Exception:  # noqa: BLE001 - a damaged LUT: this frame's own transform reports it
                    continue
                if np.isfinite(y).all():
                    lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
            self._range = (lo, hi)
        return self._range

    def _needs_grey_lut(self, arr: np.ndarray) -> bool:
        """A monochrome frame whose stored values are not display values: signed, rescaled (Modality LUT) or,
        deeper than 8 bits, with a display window (VOI). Unsigned 8-bit data is what the scanner showed."""
        ds = self._ds
        if arr.ndim != 2 or self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return False
        if arr.dtype.kind == "f":     # float pixel data: no bit depth; its window, else its value range
            return True
        try:
            rescaled = "ModalityLUTSequence" in ds or any(
                ds.get(k) is not None and float(ds.get(k)) != v for k, v in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)))
            return self.signed or rescaled or (self.bits_stored > 8 and _voi(ds) is not None)
        except Exception:  # noqa: BLE001 - a damaged element raises whatever pydicom's parser raises
            return True             # _grey_lut reports it in one line

    def _grey_lut(self, arr: np.ndarray) -> np.ndarray:
        """Monochrome frame -> uint8 as a DICOM viewer shows it (PS3.3 C.11): the Modality LUT (RescaleSlope /
        Intercept or a Modality LUT Sequence, pydicom's apply_modality_lut), then the first VOI window
        (WindowCenter / Width, pydicom's apply_windowing onto 0..255) or VOI LUT Sequence; without either,
        the frame's own value range onto 0..255. MONOCHROME1 is inverted last (bright is echogenic)."""
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = self._ds
        try:
            x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
            kind = _voi(ds)
            if kind == "window":
                y = apply_voi_lut(x, _window_only(ds), index=0)         # onto 0..255 (BitsStored 8, unsigned)
            elif kind == "lut":
                y = np.asarray(apply_voi_lut(np.rint(x).astype(np.int64), ds, index=0), dtype=np.float64)  # LUT indices
                bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                y = y * 255.0 / ((1 << bits) - 1)
            else:
                lo, hi = self._value_range(x)       # the frame's, or the whole cine's: one scale for the loop
                y = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
        except Exception as exc:  # noqa: BLE001 - a damaged LUT, window or rescale: pydicom raises many kinds
            raise Undecodable(f"cannot apply the DICOM grey-level transform ({type(exc).__name__}: {exc})",
                              path=self.path, hint="the Rescale / Window / LUT attributes are damaged; export again"
                              ) from exc
        out = np.clip(np.rint(y), 0, 255).astype(np.uint8)
        return 255 - out if self.photometric == "MONOCHROME1" else out

    def _check_jpeg_frame(self, index: int) -> None:
        """A JPEG frame whose data is damaged (a zero-filled gap, flipped bits) is refused, as a JPEG file
        is (formats.check_jpeg_data): pydicom's decoders give such a frame as plausible gray blocks with
        a warning at most. A frame that cannot even be found is left to the decode, which reports it."""
        from pydicom.encaps import get_frame

        try:
            data = get_frame(self._ds.PixelData, index, number_of_frames=self.n_frames)
        except Exception:  # noqa: BLE001 - a damaged encapsulation: pixel_array reports it
            return
        try:
            check_jpeg_data(data, self.path)
        except Undecodable as exc:
            if self.n_frames == 1:
                raise
            raise Undecodable(f"frame {index} of {self.n_frames}: {exc.message}", path=exc.path, hint=exc.hint) from exc

    def frames(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame (or those of `indices`) in order. A cine frame that cannot be decoded (damaged data) is
        passed over and the next ones still come; after the last, one Undecodable names the frames that
        were passed over."""
        indices = range(self.n_frames) if indices is None else indices
        bad: list[tuple[int, Undecodable]] = []
        for i in indices:
            try:
                frame = self.frame(i)
            except Undecodable as exc:
                if self.n_frames == 1:
                    raise
                bad.append((i, exc))
                continue
            yield i, frame
        if bad:
            first = bad[0][1]
            which = ", ".join(str(i) for i, _ in bad[:10]) + (", ..." if len(bad) > 10 else "")
            others = "; the others were read" if len(bad) < len(indices) else ""
            raise Undecodable(f"{len(bad)} of {len(indices)} frames could not be decoded (frame {which}{others}): "
                              f"{first.message}", path=self.path, hint=first.hint)


def _inside(box: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    """Whether (x, y, w, h) `box` lies within `outer`."""
    x, y, w, h = box
    ox, oy, ow, oh = outer
    return ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh


def _voi(ds) -> str | None:
    """Which VOI transform a dataset gives: "window" (WindowCenter and WindowWidth, width >= 1), "lut"
    (a VOI LUT Sequence) or None."""
    from pydicom.multival import MultiValue

    try:
        if "WindowCenter" in ds and "WindowWidth" in ds:
            width = ds.WindowWidth
            if float(width[0] if isinstance(width, MultiValue) else width) >= 1:
                return "window"
    except (TypeError, ValueError, IndexError):
        pass
    return "lut" if "VOILUTSequence" in ds and len(ds.VOILUTSequence) else None


def _window_only(ds):
    """The window attributes of `ds` on an unsigned 8-bit dataset without a rescale: pydicom's
    apply_windowing then maps the (already rescaled) values onto 0..255."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            setattr(out, keyword, ds[keyword].value)
    out.BitsStored, out.PixelRepresentation, out.PhotometricInterpretation = 8, 0, "MONOCHROME2"
    return out


FRAME_TIME, FRAME_TIME_VECTOR = 0x00181063, 0x00181065


def _timed_by_vector(ds) -> bool:
    """Whether a cine's frame times are its FrameTimeVector: FrameIncrementPointer names it, or the vector is
    there and FrameTime is neither named nor present."""
    if "FrameTimeVector" not in ds:
        return False
    fip = ds.get("FrameIncrementPointer")      # one tag (an int), or several (pydicom's MultiValue)
    try:
        pointers = [] if fip is None else [int(fip)] if isinstance(fip, int) else [int(t) for t in fip]
    except (TypeError, ValueError):
        pointers = []
    return FRAME_TIME_VECTOR in pointers or (FRAME_TIME not in pointers and not ds.get("FrameTime"))


def depth_top(arr: np.ndarray, bits_stored: int) -> int:
    """The largest value of a frame that counts for its bit depth (`pixels.label_free_top`): a full white of
    65535, 2**32 - 1 or 2**BitsStored - 1 (a label burned in at full scale) is left out, as for images."""
    return label_free_top(arr, {(1 << 16) - 1, (1 << 32) - 1, (1 << bits_stored) - 1})


def pixel_depth(arr: np.ndarray, bits_stored: int, bits_allocated: int, top: int | None = None) -> int:
    """The bit depth a frame's values span: BitsStored when the header names a depth below its
    container (12 bits stored in 16 allocated: the usual way to write 10-, 12- and 14-bit data);
    else (BitsStored = BitsAllocated, which many writers fill in for any data) the depth the values
    need, rounded up to 8, 10, 12, 14 or 16 bits (`pixels.standard_depth`, as `pixels.as_uint8` does),
    so that 12-bit values in a file that says 16 keep their contrast instead of landing in the lowest
    16th of the range."""
    if 1 <= bits_stored < bits_allocated and bits_stored <= 32:
        return bits_stored
    top = depth_top(arr, bits_stored) if top is None else top     # `top`: the largest value of the whole cine
    return standard_depth(top) or top.bit_length()      # 32-bit data beyond 16 bits: the bits its values use


def _reason(exc: BaseException) -> str:
    """A library exception as a short clause: its type and its first line (pydicom names the bad element)."""
    first = (str(exc).strip().splitlines() or [""])[0].strip()
    if "raised by all available plugins" in first:        # pydicom: the plugins' own reasons follow
        rest = [x.strip() for x in str(exc).strip().splitlines()[1:] if x.strip()]
        first = rest[0] if rest else first
    first = first[:160] + ("…" if len(first) > 160 else "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def to_uint8(arr: np.ndarray, bits_stored: int, bits_allocated: int, *, invert: bool = False,
             top: int | None = None) -> np.ndarray:
    """Unsigned DICOM pixels -> uint8 by their depth (`pixel_depth`): values above the depth are not
    pixel data (masked), then a shift to 8 bits; `invert` (MONOCHROME1, where 0 is white) flips the
    values within that depth first, so bright is echogenic."""
    depth = pixel_depth(arr, bits_stored, bits_allocated, top)
    if arr.dtype == np.uint8 and depth == 8 and not invert:
        return arr
    top = (1 << depth) - 1
    px = np.bitwise_and(arr.astype(np.uint32), top)
    if invert:
        px = top - px
    if depth > 8:
        px >>= depth - 8
    elif depth < 8:
        px = px * 255 // top
    return px.astype(np.uint8)


def open_dicom(path: str | Path, *, allow_any_modality: bool = False) -> DicomFile:
    """Open a DICOM file (header only; frames decode on demand). InputError on anything unusable."""
    return DicomFile(path, allow_any_modality=allow_any_modality)
