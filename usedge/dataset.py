"""A user's data set: an ImageFolder tree, optionally with `manifest.csv` (no torch).

manifest.csv columns (header required; paths relative to the manifest's folder):
    path        image file (PNG/JPEG/BMP/TIFF/WebP or DICOM: usedge.runtime.formats.IMAGE_SUFFIXES)
    label       class name, e.g. epidermal_cyst
    patient_id  any string; every image of one patient stays in one fold
    mask_path   optional: lesion mask (PNG, nonzero = lesion), same size as the image
    bbox        optional: lesion box "x,y,w,h" in image pixels
Without a manifest, `<root>/<class>/**/<image>` is read: a DICOM image's patient is its PatientID (as a
pseudonym, usedge.runtime.dicom.patient_head), unless that PatientID is on images of two classes (an
anonymiser's "ANON": no patient); every other image is its own patient.

Refused with one line naming the manifest line: a row listed twice, labels that differ only in case or
spaces (`Lipoma` beside `lipoma`: a typo, not a class), a patient_id empty on some rows but not others,
a patient in two classes. `Dataset.notes` says what may mislead without being wrong (no patient ids,
class folders the manifest leaves out); `usedge train` prints them.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from usedge.errors import DataError
from usedge.runtime.formats import IMAGE_SUFFIXES, LITTER_FOLDERS, expand_inputs, other_types

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ["path", "label", "patient_id", "mask_path", "bbox"]


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient_id: str
    mask_path: Path | None = None
    bbox: tuple[int, int, int, int] | None = None


@dataclass
class Dataset:
    root: Path
    class_names: list[str]
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)    # warnings for the user (see the module docstring)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> list[str]:
        return [s.patient_id for s in self.samples]

    @property
    def has_patient_ids(self) -> bool:
        """False when the data set does not name every image's patient (a manifest without patient_id, a folder
        without one whose images are not all DICOMs with a PatientID): those images count as their own
        patient (its notes say so)."""
        return not any(UNNAMED_PATIENTS in n for n in self.notes)

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> list[tuple[str, int, int]]:
        """(class name, images, patients) per class, in class order."""
        return [(name, sum(s.label == i for s in self.samples), len({s.patient_id for s in self.samples if s.label == i}))
                for i, name in enumerate(self.class_names)]


def _parse_bbox(text: str, where: str) -> tuple[int, int, int, int] | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        x, y, w, h = (int(round(float(v))) for v in text.replace(" ", ",").split(",") if v)
    except ValueError as exc:
        raise DataError(f"bad bbox '{text}'", path=where, hint="write bbox as x,y,w,h in pixels") from exc
    return (x, y, w, h)


UNNAMED_PATIENTS = "images of one patient can land in a training and a test fold and overstate accuracy"
ONE_PATIENT_PER_IMAGE = f"each image counts as its own patient: {UNNAMED_PATIENTS}"
# columns that name a patient (or a lesion) under another name than patient_id (normalised: lower case, _ for
# spaces and -): a manifest with one of them but no patient_id column is told which to rename
PATIENT_LIKE = frozenset({"patient", "patients", "patient_no", "patient_number", "subject", "subject_id", "subjectid",
                          "case", "case_id", "caseid", "lesion_id", "lesionid", "lesion", "mrn", "study_id", "studyid",
                          "participant", "participant_id", "pid"})


def check_no_shared_images(dataset: "Dataset") -> None:
    """DataError when two files hold the same bytes under two patients: a copy of an image filed under
    another patient would land in a training and a test fold. Only files of equal size are hashed."""
    from usedge.fileio import sha256_file

    by_size: dict[int, list[Sample]] = {}
    for sample in dataset.samples:
        try:
            by_size.setdefault(sample.path.stat().st_size, []).append(sample)
        except OSError:
            continue            # reported where the image is read
    for same_size in (group for group in by_size.values() if len({s.patient_id for s in group}) > 1):
        owner: dict[str, Sample] = {}
        for sample in same_size:
            try:
                digest = sha256_file(sample.path)
            except OSError:
                continue
            first = owner.setdefault(digest, sample)
            if first.label != sample.label:     # one patient_id would not do: a patient has one class
                names = dataset.class_names
                raise DataError(f"{first.path} ({names[first.label]}) and {sample.path} ({names[sample.label]}) are the "
                                "same image under two classes", path=dataset.root,
                                hint="keep the copy in its right class only (one of the labels is wrong)")
            if first.patient_id != sample.patient_id:
                raise DataError(f"{first.path} (patient {first.patient_id}) and {sample.path} (patient "
                                f"{sample.patient_id}) are the same image", path=dataset.root,
                                hint="remove the copy, or give both one patient_id (else one copy can be trained "
                                     "on and the other tested)")


def name_key(name: str) -> str:
    """What two spellings of one name share: without spaces, in NFKC form and case-folded."""
    return unicodedata.normalize("NFKC", "".join(name.split())).casefold()


def _same_but_case(names) -> tuple[str, str] | None:
    """Two names that differ only in case, spaces or Unicode form (NFC / NFD: a typo or another keyboard,
    not two classes), or None."""
    seen: dict[str, str] = {}
    for n in sorted(names):
        key = name_key(n)
        if key in seen:
            return seen[key], n
        seen[key] = n
    return None


# folders of lesion masks (casefolded): `usedge synth cohort` writes masks/ beside the class folders, public
# sets masks/, GT/, ground_truth/ beside them or inside each class (BUSI-like <class>/images + <class>/masks)
MASK_FOLDERS = frozenset({"masks", "mask", "gt", "groundtruth", "ground_truth", "ground truth", "annotations",
                          "annotation", "segmentations", "segmentation", "labels"})
# never a class of images (casefolded): mask folders, and what NAS boxes, unzips and Windows drives leave
NOT_CLASSES = MASK_FOLDERS | LITTER_FOLDERS
# a class's images in a subfolder beside its masks (<class>/images): not a patient's folder
IMAGE_FOLDERS = frozenset({"images", "image", "imgs", "img", "original", "originals", "scans"})
# folder names of a data set shipped in splits (train/<class>, test/<class>): never classes
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "dev", "holdout"})
# a lesion mask saved beside its image, as public data sets do: BUSI `benign (1)_mask.png`, `..._mask_1.png`;
# the ultrasound nerve set `1_1_mask.tif`; others `_seg`, `-gt`, `_label`, `_annotation`
MASK_NAME = re.compile(r"(?P<stem>.+?)[ _-](?:mask|seg|segmentation|gt|label|annotation)(?:[ _-]?\d+)?", re.IGNORECASE)


def _subfolders(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def looks_like_mask(path: Path) -> bool:
    """Whether an image file holds a mask's pixels: at least 98 % of them at its lowest or highest value (a
    binary mask, anti-aliased at its edges), not a grey-level scan (an annotated copy of the image)."""
    import cv2
    import numpy as np

    from usedge.runtime.formats import read_image

    try:
        px = np.asarray(read_image(path))
    except Exception:  # noqa: BLE001 - unreadable: not taken for a mask (the image reader says why, as an image)
        return False
    if px.ndim == 3:
        px = cv2.cvtColor(px[..., :3], cv2.COLOR_BGR2GRAY)
    lo, hi = px.min(), px.max()
    return bool(np.count_nonzero((px == lo) | (px == hi)) >= 0.98 * px.size)


def _mask_folders_checked(candidates: dict[Path, Path]) -> dict[Path, Path]:
    """The (mask -> image) candidates of the folders whose first candidate holds a mask's pixels: a folder of
    `<image>-annotation.png` grey-level copies keeps them as images."""
    first: dict[Path, bool] = {}
    for mask in sorted(candidates):
        if mask.parent not in first:
            first[mask.parent] = looks_like_mask(mask)
    return {m: i for m, i in candidates.items() if first[m.parent]}


def split_masks(files: list[Path]) -> tuple[list[Path], dict[Path, list[Path]]]:
    """Images and the masks beside them: a file named `<stem>_mask.<ext>` (MASK_NAME) next to an image
    `<stem>.<any ext>` in the same folder is that image's lesion mask, not an image, when the folder's first
    such file holds a mask's pixels (looks_like_mask). Returns (images, {image: its masks, sorted}). A
    mask-like name without its image stays an image."""
    stems: dict[tuple[Path, str], Path] = {}
    for f in files:
        stems.setdefault((f.parent, f.stem), f)
    candidates: dict[Path, Path] = {}
    for f in files:
        m = MASK_NAME.fullmatch(f.stem)
        image = stems.get((f.parent, m["stem"])) if m else None
        if image is not None and image != f:
            candidates[f] = image
    masks: dict[Path, list[Path]] = {}
    for f, image in _mask_folders_checked(candidates).items():
        masks.setdefault(image, []).append(f)
    taken = {x for group in masks.values() for x in group}
    return [f for f in files if f not in taken], {k: sorted(v) for k, v in masks.items()}


def split_mask_folders(files: list[Path], class_root: Path) -> tuple[list[Path], dict[Path, list[Path]], list[Path]]:
    """Images, and the files in mask folders (MASK_FOLDERS, at any depth under `class_root`): those are masks,
    not images; a mask whose name is one image's of the class (`images/3.png`, `masks/3.png`) is its mask.
    Returns (images, {image: its masks}, every file of the mask folders)."""
    def in_mask_folder(f: Path) -> bool:
        return any(part.casefold() in MASK_FOLDERS for part in f.relative_to(class_root).parts[:-1])

    found = [f for f in files if in_mask_folder(f)]
    # a folder named like masks whose files are grey-level scans (a patient's initials "GT", extra scans in
    # labels/) holds images: judged by its first file's pixels
    first: dict[Path, Path] = {}
    for f in sorted(found):
        first.setdefault(f.parent, f)
    scans = {folder for folder, f in first.items() if not looks_like_mask(f)}
    found = [f for f in found if f.parent not in scans]
    taken = set(found)
    images = [f for f in files if f not in taken]
    by_stem: dict[str, list[Path]] = {}
    for f in images:
        by_stem.setdefault(f.stem, []).append(f)
    masks: dict[Path, list[Path]] = {}
    for f in found:
        stem = m["stem"] if (m := MASK_NAME.fullmatch(f.stem)) and m["stem"] in by_stem else f.stem
        if len(by_stem.get(stem, [])) == 1:
            masks.setdefault(by_stem[stem][0], []).append(f)
    return images, {k: sorted(v) for k, v in masks.items()}, found


def _mask_note(root: Path, masks: dict[Path, list[Path]]) -> list[str]:
    if not masks:
        return []
    n = sum(len(v) for v in masks.values())
    image, first = next(iter(masks.items()))
    extra = sum(len(v) - 1 for v in masks.values())
    more = f"; {extra} image(s) have more than one, and only the first is used (by explain)" if extra else ""
    return [f"{n} file(s) named like their image plus a mask suffix (_mask, _seg, _gt, ...; e.g. "
            f"{first[0].relative_to(root).as_posix()} beside {image.name}) are read as lesion masks, not trained as "
            f"images{more}"]


def _mask_folder_note(root: Path, found: list[Path], matched: int) -> list[str]:
    if not found:
        return []
    folders = sorted({f.parent.relative_to(root).as_posix() for f in found})
    return [f"{len(found)} file(s) in mask folders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}) are "
            f"not trained as images; {matched} of them named like an image of their class are read as its lesion mask"]


def _splits_error(root: Path, folders: list[Path]) -> DataError | None:
    """A data set shipped in splits (train/<class>, test/<class>) or one folder too high (DATA/set/<class>):
    its top folders are not classes."""
    nested = {p.name: sorted(q.name for q in _subfolders(p) if _holds_images(q)) for p in folders}
    splits = [n for n in nested if n.casefold() in SPLIT_NAMES and nested[n]]
    # a folder of one class's images and its masks (<class>/images, <class>/masks) is a class, not a data set
    nested = {n: [c for c in subs if c.casefold() not in NOT_CLASSES] for n, subs in nested.items()}
    if splits:
        inner = sorted({c for n in splits for c in nested[n]})
        return DataError(f"{', '.join(splits)} look like the splits of a data set (holding the class folders "
                         f"{', '.join(inner[:6])}), not classes", path=root,
                         hint="put each class's images from every split into one folder per class "
                              "(usedge makes its own folds by patient), or pass one split's folder")
    if len(folders) == 1 and nested[folders[0].name] and not _holds_images(folders[0]):
        return DataError(f"the only folder, {folders[0].name}, holds the class folders "
                         f"({', '.join(nested[folders[0].name][:6])})", path=root,
                         hint=f"pass {root / folders[0].name} as the data set")
    return None


def _holds_images(folder: Path) -> bool:
    try:
        return any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir())
    except OSError:
        return False


def _column(name: str | None) -> str:
    """A manifest column name as meant: lower case, `_` for spaces and hyphens; PatientID is patient_id."""
    key = re.sub(r"[\s-]+", "_", (name or "").strip().lower())
    return {"patientid": "patient_id", "maskpath": "mask_path"}.get(key, key)


def read_manifest(manifest: Path, class_names: list[str] | None = None) -> Dataset:
    root = manifest.parent
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:   # -sig: Excel's "CSV UTF-8" starts with a BOM
            header = fh.readline()
            # a European Excel writes ';' between columns, some tools a tab: the header says which
            sep = next((c for c in (",", ";", "\t") if c in header), ",")
            fh.seek(0)
            reader = csv.DictReader(fh, delimiter=sep)
            # column names as people type them: "Path", " label ", "Patient_ID", "PatientID", "patient id"
            reader.fieldnames = [_column(f) for f in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest ({exc})", path=manifest, hint="write a UTF-8 CSV with a header") from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        got = ",".join(reader.fieldnames or []) if rows else "no rows"
        raise DataError(f"manifest needs at least the columns path,label (and patient_id); its header reads: {got[:120]}",
                        path=manifest, hint=f"columns: {','.join(MANIFEST_COLUMNS)}")
    lines = [line for line, r in enumerate(rows, start=2) if any((v or "").strip() for v in r.values() if isinstance(v, str))]
    rows = [rows[line - 2] for line in lines]       # blank rows (",,,," as Excel leaves them) are not rows
    for line, r in zip(lines, rows):
        # Windows separators (epidermal_cyst\p1.png) are folders too
        r["path"], r["label"] = (r.get("path") or "").strip().replace("\\", "/"), (r.get("label") or "").strip()
        if not r["label"]:
            raise DataError(f"empty label for {r['path'] or 'this row'}", path=f"{manifest}:{line}",
                            hint="give every row its class in the label column")
    names = class_names or sorted({r["label"] for r in rows})
    if class_names is None and (pair := _same_but_case(names)):
        labels = [r["label"] for r in rows]
        typo = min(pair, key=labels.count)          # the rarer spelling: the line to fix
        line = lines[labels.index(typo)]
        raise DataError(f"labels '{pair[0]}' and '{pair[1]}' differ only in case, spaces or Unicode form",
                        path=f"{manifest}:{line}",
                        hint="spell each class one way (a typo would train a class of its own)")
    index = {n: i for i, n in enumerate(names)}
    has_pid = [bool((r.get("patient_id") or "").strip()) for r in rows]
    if any(has_pid) and not all(has_pid):
        line = lines[has_pid.index(False)]
        raise DataError("patient_id is empty here but set on other rows", path=f"{manifest}:{line}",
                        hint="give every row its patient_id (an image without one would count as a patient of its own)")
    patient_class: dict[str, str] = {}
    first_line: dict[Path, int] = {}
    samples = []
    for line, r in zip(lines, rows):
        where = f"{manifest}:{line}"
        if r["label"] not in index:
            raise DataError(f"unknown label '{r['label']}'", path=where, hint=f"use one of {', '.join(names)}")
        path = root / r["path"]
        if not r["path"] or not path.is_file():
            raise DataError("image file not found", path=where, hint=f"check the path {r['path']!r}")
        if (earlier := first_line.setdefault(path.resolve(), line)) != line:
            raise DataError(f"{r['path']} is listed twice (also on line {earlier})", path=where,
                            hint="list each image once (a repeated image is trained and scored twice)")
        pid = (r.get("patient_id") or "").strip() or r["path"]
        if patient_class.setdefault(pid, r["label"]) != r["label"]:
            raise DataError(f"patient '{pid}' has images in two classes", path=where,
                            hint="one patient has one lesion type; fix patient_id or label")
        mask = (r.get("mask_path") or "").strip()
        samples.append(Sample(path=path, label=index[r["label"]], patient_id=pid,
                              mask_path=root / mask if mask else None,
                              bbox=_parse_bbox(r.get("bbox", ""), where)))
    like = [c for c in reader.fieldnames or [] if c in PATIENT_LIKE]
    unused = (f" (its column '{like[0]}' is not read: if it identifies patients, name it patient_id)" if like
              else "; add a patient_id column")
    notes = [] if any(has_pid) else [f"{manifest.name} has no patient_id: {ONE_PATIENT_PER_IMAGE}{unused}"]
    if any(has_pid) and (pair := _same_but_case({s.patient_id for s in samples})):
        notes.append(f"patient IDs '{pair[0]}' and '{pair[1]}' differ only in case, spaces or Unicode form: if they "
                     "are one patient, write them one way (else their images can land in a training and a test fold)")
    parts = [PurePosixPath(r["path"]).parts for r in rows]
    listed = {q[0] for q in parts if q}
    within = all(len(q) > 1 and q[0] not in ("/", "..") for q in parts)     # every image in a subfolder of root
    left_out = sorted(p.name for p in _subfolders(root)
                      if within and p.name not in listed and p.name.casefold() not in NOT_CLASSES
                      and _holds_images(p))
    if left_out:
        notes.append(f"{manifest.name} lists no image in the folder(s) {', '.join(left_out)}: not part of this data set")
    in_manifest = {x.resolve() for s in samples for x in (s.path, s.mask_path) if x}
    if unlisted := _unlisted_images(root, listed if within else set(), in_manifest):
        notes.append(f"{len(unlisted)} image file(s) in the folders {manifest.name} uses are not listed in it "
                     f"(e.g. {unlisted[0]}): not part of this data set; add them to {manifest.name} to train on them")
    return Dataset(root=root, class_names=list(names), samples=samples, notes=notes)


def _unlisted_images(root: Path, folders: set[str], listed: set[Path]) -> list[str]:
    """Image files under the manifest's folders (not masks/) that it does not list, relative to root: new
    scans copied into the class folders and not added to the manifest would silently stay out."""
    out = []
    for name in sorted(f for f in folders if f.casefold() not in NOT_CLASSES):
        if (root / name).is_dir():
            files, _ = expand_inputs([root / name], IMAGE_SUFFIXES)
            images, _ = split_masks(files)      # a BUSI-style mask beside its image is not a new scan
            out += [f.relative_to(root).as_posix() for f in images if f.resolve() not in listed]
    return out


def _dicom_patients(root: Path, classes: list[str], samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """A folder without a manifest: a DICOM image's patient is its PatientID, as a pseudonym (dicom:<hash>,
    usedge.runtime.dicom.patient_head: the header alone is read, and the ID is never shown). The other images,
    DICOMs without a readable PatientID, and DICOMs whose PatientID is on images of two or more classes (an
    anonymiser's placeholder such as ANON or 0, or a wrong label: not one patient) stay their own patient.
    DICOMs that hold no image (a structured report, a presentation state, a key-object note beside the
    images of a PACS export) are left out. Returns the samples and the notes that say which images are
    grouped, which are not, which were left out, and which groups look wrong (one PatientID written in two
    cases; one PatientID over several patient folders)."""
    from usedge.runtime.dicom import PATIENT_PREFIX, patient_head

    if not samples:
        return samples, []
    heads = {s.path: h for s in samples if (h := patient_head(s.path, fold=name_key)) is not None}   # DICOMs
    no_image = {p for p, h in heads.items() if not h.image}
    notes = ([f"{len(no_image)} DICOM file(s) hold no image (a structured report, presentation state or key-object "
              f"note: no Rows/Columns) and are not read (e.g. {min(no_image).relative_to(root).as_posix()})"]
             if no_image else [])
    samples = [s for s in samples if s.path not in no_image]
    keys = {p: h.key for p, h in heads.items() if h.image}
    by_key: dict[str, list[Sample]] = {}
    for s in samples:
        if keys.get(s.path):
            by_key.setdefault(keys[s.path], []).append(s)
    shared = {k: v for k, v in by_key.items() if len({s.label for s in v}) > 1}
    named = {s.path: k for k, v in by_key.items() if k not in shared for s in v}
    samples = [replace(s, patient_id=named[s.path]) if s.path in named else s for s in samples]
    others = ", ".join(f"{n} {what}" for n, what in (
        (len(samples) - len(keys), "not DICOM"), (sum(k is None for k in keys.values()), "DICOM without a readable PatientID"),
        (sum(map(len, shared.values())), "DICOM whose PatientID is on two or more classes")) if n)
    add = f"; add a {MANIFEST_NAME} with patient_id (docs/synth.md)"
    if not named:       # no DICOM names a patient: as before
        notes.insert(0, f"{root.name} has no {MANIFEST_NAME}{f' and no image names a patient ({others})' if keys else ''}: "
                        f"{ONE_PATIENT_PER_IMAGE}{add}")
    else:
        unnamed = len(samples) - len(named)
        notes.insert(0, f"{root.name} has no {MANIFEST_NAME}: {len(named)} DICOM image(s) are grouped by their PatientID "
                        f"into {len(set(named.values()))} patient(s) (named {PATIENT_PREFIX}<hash of the ID>; the ID is not "
                        "shown)" + (f"; the {unnamed} other image(s) ({others}) name no patient, and each of them counts "
                                    f"as its own patient: {UNNAMED_PATIENTS}{add}" if unnamed else ""))
    if shared:
        worst = sorted(shared.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        listed = "; ".join(f"{k} on {len(v)} images of {', '.join(classes[i] for i in sorted({s.label for s in v})[:4])} "
                           f"(e.g. {min(s.path for s in v).relative_to(root).as_posix()})" for k, v in worst[:3])
        notes.append(f"{len(shared)} PatientID(s) on images of two or more classes taken for an anonymiser's placeholder "
                     f"(ANON, 0) or a wrong label, not a patient (one patient has one lesion type): {listed}"
                     f"{'; ...' if len(shared) > 3 else ''}; their images are not grouped, each counts as its own patient; "
                     f"if such an ID names a patient, write a {MANIFEST_NAME} with patient_id (docs/synth.md)")
    folded: dict[str, set[str]] = {}
    for p, key in named.items():
        folded.setdefault(heads[p].folded, set()).add(key)
    if pairs := sorted(sorted(v) for v in folded.values() if len(v) > 1):
        notes.append(f"PatientIDs {' and '.join(pairs[0][:2])} differ only in case, spaces or Unicode form"
                     f"{f' (and {len(pairs) - 1} more such group(s))' if len(pairs) > 1 else ''}: if they are one patient, "
                     f"write them one way, or give them one patient_id in a {MANIFEST_NAME} (else their images can land "
                     "in a training and a test fold)")
    folders = {k: {s.path.relative_to(root).parts[1] for s in v if len(s.path.relative_to(root).parts) > 2}
               for k, v in by_key.items() if k not in shared}
    if spread := sorted((k for k, f in folders.items() if len(f) > 1), key=lambda k: (-len(folders[k]), k)):
        k = spread[0]
        notes.append(f"PatientID {k} is on images in {len(folders[k])} subfolders of its class (e.g. "
                     f"{', '.join(sorted(folders[k])[:3])}){f', and {len(spread) - 1} more such ID(s)' if len(spread) > 1 else ''}: "
                     f"one patient for usedge; if those folders are patients (an anonymiser's placeholder such as ANON), "
                     f"write a {MANIFEST_NAME} with their patient_id")
    return samples, notes


def _is_output_folder(folder: Path) -> bool:
    """A folder a usedge run or export wrote (run.json, a model, an output mark): never a class of images."""
    return any((folder / name).exists() for name in ("run.json", "model.pt", "model.onnx", ".usedge-output"))


def scan_image_folder(root: Path) -> Dataset:
    from usedge.runtime.formats import file_identity

    # NOT_CLASSES (masks/, an unzip's __MACOSX/) are never classes; nor is a folder holding usedge runs
    # (train DATA --out DATA/runs/r1), at any depth
    folders = sorted((p for p in _subfolders(root) if p.name.casefold() not in NOT_CLASSES and not _is_output_folder(p)
                      and not any(_is_output_folder(q) for q in _subfolders(p))), key=lambda p: p.name)
    if err := _splits_error(root, folders):
        raise err
    classes = [p.name for p in folders]
    if pair := _same_but_case(classes):
        raise DataError(f"class folders '{pair[0]}' and '{pair[1]}' differ only in case, spaces or Unicode form",
                        path=root,
                        hint="put each class's images in one folder (two spellings would train two classes)")
    samples, named, all_masks, in_mask_folders, matched, ignored = [], [], {}, [], 0, []
    for i, name in enumerate(classes):
        # hidden files (a Mac's ._name.png) and NAS/unzip litter folders left out
        files, notes = expand_inputs([root / name], IMAGE_SUFFIXES, ignored=ignored)
        if notes:
            raise DataError(str(notes[0]), hint="make every image of the data set a readable file in a real folder")
        files, folder_masks, found = split_mask_folders(files, root / name)
        in_mask_folders += found
        matched += sum(len(v) for v in folder_masks.values())
        files, masks = split_masks(files)
        all_masks |= masks
        named += files
        samples += [Sample(path=f, label=i, patient_id=str(f.relative_to(root)),
                           mask_path=(masks.get(f) or folder_masks.get(f) or [None])[0]) for f in files]
    seen: dict = {}
    for f in named:     # a link to another image: the same pixels could land in a training and a test fold
        if (other := seen.setdefault(file_identity(f), f)) != f:
            raise DataError(f"{other.relative_to(root)} and {f.relative_to(root)} are one image file (a link)", path=root,
                            hint="keep each image once in the data set (remove the link)")
    samples, notes = _dicom_patients(root, classes, samples)
    nested = [rel for s in samples if len(rel := s.path.relative_to(root).parts) > 2 and rel[1].casefold() not in IMAGE_FOLDERS
              and s.patient_id == str(s.path.relative_to(root))]
    if nested:      # <class>/<patient>/<image>, as many hospital exports are: the folders are not read as patients
        notes.append(f"{len(nested)} image(s) lie in subfolders of their class folder (e.g. {'/'.join(nested[0])}): "
                     f"if a subfolder holds one patient's images, give them that patient_id in a {MANIFEST_NAME} "
                     "(docs/synth.md); without one, each image still counts as its own patient")
    tables = sorted(p.name for p in root.glob("*") if p.suffix.lower() in (".csv", ".tsv", ".xlsx", ".xls") and p.is_file())
    if tables:      # HAM10000: the labels are in HAM10000_metadata.csv, the folders are the download's parts
        notes.append(f"{root.name} holds {', '.join(tables[:3])} but no {MANIFEST_NAME}: the class folders are the classes "
                     f"({', '.join(classes[:4])}); if the labels or patients are in that table, write a {MANIFEST_NAME} "
                     "(path,label,patient_id) from it")
    if all(c.isdigit() for c in classes) and classes != (by_number := sorted(classes, key=int)):
        k, name = next((classes.index(c), c) for i, c in enumerate(by_number) if classes[i] != c)
        notes.append(f"class folders sort as text, as in ImageFolder: {', '.join(classes[:6])}"
                     f"{', ...' if len(classes) > 6 else ''} (class_index {k} is folder {name})")
    notes += _mask_note(root, all_masks) + _mask_folder_note(root, in_mask_folders, matched) + other_types(ignored)
    return Dataset(root=root, class_names=classes, samples=samples, notes=[n for n in notes if n])


def load_dataset(source: str | Path, class_names: list[str] | None = None) -> Dataset:
    """Load a folder (with or without manifest.csv) or a manifest CSV path."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        ds = read_manifest(source, class_names)
    elif source.is_dir():
        manifest = source / MANIFEST_NAME
        ds = read_manifest(manifest, class_names) if manifest.is_file() else scan_image_folder(source)
    else:
        raise DataError("data set not found", path=source,
                        hint="pass a folder of <class>/<image> (optionally with manifest.csv) or a manifest .csv")
    if not ds.samples:
        loose = sorted(f for f in source.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) if source.is_dir() else []
        if loose:       # a flat folder of scans: "no images found" read as if the images were not there
            raise DataError(f"no class folders: {len(loose)} image(s) lie directly in the folder (e.g. {loose[0].name})",
                            path=source, hint=f"put each class's images in a folder named for the class, or write a "
                                              f"{MANIFEST_NAME} (path,label,patient_id)")
        raise DataError("no images found", path=source,
                        hint="expected <class>/<image>.png folders or a manifest.csv")
    empty = [n for i, n in enumerate(ds.class_names) if i not in set(ds.labels)]
    if empty:
        raise DataError(f"no images for class(es) {', '.join(empty)}", path=source,
                        hint="every class needs images")
    if class_names is None and len(ds.class_names) < 2:
        raise DataError(f"one class ({ds.class_names[0]}): a classifier needs images of at least two", path=source,
                        hint="add a folder (or manifest label) per class")
    return ds


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """Write manifest rows (dicts with MANIFEST_COLUMNS keys) atomically."""
    from usedge.fileio import atomic_write

    with atomic_write(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
    return path
