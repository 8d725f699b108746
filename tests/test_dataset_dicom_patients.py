"""A folder of DICOMs without a manifest (a hospital export in class folders, several images per patient):
each DICOM's patient is its PatientID, as a pseudonym, so a patient's images never land in a training and a
test fold; placeholders, empty IDs, other images and damaged headers stay one patient per image, and the
notes say which. Real files written with pydicom; the PatientID never shows in a note or a patient name."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fixtures.badinput import PLANTED_ID, make_dicom, scan_like
from usedge.dataset import ONE_PATIENT_PER_IMAGE, load_dataset
from usedge.errors import DataError
from usedge.train.cv import check_splits, folds_csv_text, make_splits

LEAK = "images of one patient can land in a training and a test fold and overstate accuracy"


def _dicom(path: Path, patient_id: str | None, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    px = scan_like(32, 48, seed=seed)
    return make_dicom(path, px) if patient_id == PLANTED_ID else \
        make_dicom(path, px, patient=patient_id is not None, patient_id=patient_id or "")


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), scan_like(32, 48, seed=seed))


def _patients(root: Path, layout: dict[str, dict[str, int]]) -> dict[tuple[str, str], list[str]]:
    """{class: {PatientID: images}} as <class>/IM<n>.dcm (file names free of the IDs); returns
    {(class, PatientID): the files' paths under root}."""
    files: dict[tuple[str, str], list[str]] = {}
    for cls, patients in layout.items():
        for pid, n in patients.items():
            for _ in range(n):
                k = sum(map(len, files.values()))
                files.setdefault((cls, pid), []).append(f"{cls}/IM{k:05d}.dcm")
                _dicom(root / files[cls, pid][-1], pid, k)
    return files


def _by_name(ds) -> dict[str, str]:
    return {s.path.relative_to(ds.root).as_posix(): s.patient_id for s in ds.samples}


def _no_id_shown(ds, *ids: str) -> None:
    text = "\n".join(ds.notes + ds.groups + [folds_csv_text(ds, [])])
    assert not [i for i in ids if i in text]


def test_dicom_patient_ids_group_a_hospital_export_and_no_fold_splits_a_patient(tmp_path):
    """6 patients x 3 images, in <class>/<patient>/ folders as a PACS export writes them: before, 18 patients
    of one image each, and a patient's images were trained on and tested in one fold."""
    layout = {"epidermal_cyst": {PLANTED_ID: 3, "H-1002": 3, "H-1003": 3}, "lipoma": {"H-2001": 3, "H-2002": 3, "H-2003": 3}}
    k = 0
    for cls, patients in layout.items():
        for p, (pid, n) in enumerate(patients.items()):
            for i in range(n):
                _dicom(tmp_path / cls / f"patient{p}" / f"IM{i:05d}", pid, k)    # PACS names: no suffix, DICOM bytes
                k += 1
    ds = load_dataset(tmp_path)
    names = _by_name(ds)
    assert len(ds) == 18 and len(set(ds.groups)) == 6 and all(g.startswith("dicom:") for g in ds.groups)
    for cls, patients in layout.items():
        for p in range(len(patients)):
            assert len({names[f"{cls}/patient{p}/IM{i:05d}"] for i in range(3)}) == 1
    assert ds.has_patient_ids
    assert [(c, n, p) for c, n, p in ds.class_counts()] == [("epidermal_cyst", 9, 3), ("lipoma", 9, 3)]
    assert ds.notes == [f"{tmp_path.name} has no manifest.csv: 18 DICOM image(s) are grouped by their PatientID into "
                        "6 patient(s) (named dicom:<hash of the ID>; the ID is not shown)"]   # no subfolder note
    for seed in range(3):
        splits = make_splits(ds, folds=3, inner_val_fraction=0.5, seed=seed)
        check_splits(splits, np.asarray(ds.groups))
        for s in splits:
            train, val, test = ({ds.groups[i] for i in idx} for idx in (s.train, s.val, s.test))
            assert not (train & test or train & val or val & test)
            assert all(sum(ds.groups[i] == g for i in s.test) == 3 for g in test)     # whole patients tested
    _no_id_shown(ds, *[pid for patients in layout.values() for pid in patients])


def test_an_anonymisers_constant_across_classes_is_no_patient(tmp_path):
    """Every file "Anonymized" (or "ANON", "0"): one patient in two classes would be refused in a manifest, and
    grouped it is the whole data set in one fold; read as no patient, with a note naming its pseudonym and a file."""
    files = _patients(tmp_path / "all", {"cyst": {"Anonymized": 4}, "lipoma": {"Anonymized": 4}})
    ds = load_dataset(tmp_path / "all")
    assert len(set(ds.groups)) == 8 and not any(g.startswith("dicom:") for g in ds.groups)
    assert not ds.has_patient_ids
    assert ds.notes[0] == ("all has no manifest.csv and no image names a patient (8 DICOM whose PatientID is on two or "
                           f"more classes): {ONE_PATIENT_PER_IMAGE}; add a manifest.csv with patient_id (docs/synth.md)")
    shared = ds.notes[1]
    assert shared.startswith("1 PatientID(s) on images of two or more classes taken for an anonymiser's placeholder")
    assert "dicom:" in shared and "manifest.csv" in shared
    assert f"on 8 images of cyst, lipoma (e.g. {files['cyst', 'Anonymized'][0]})" in shared
    _no_id_shown(ds, "Anonymized")

    # real IDs beside a placeholder on some files: the real ones grouped, the placeholder's files one per image
    files = _patients(tmp_path / "mixed", {"cyst": {"P1": 3, "P2": 3, "0": 2}, "lipoma": {"P3": 3, "P4": 3, "0": 1}})
    ds = load_dataset(tmp_path / "mixed")
    names = _by_name(ds)
    assert len({names[f] for f in files["cyst", "P1"]}) == 1 and names[files["cyst", "P1"][0]].startswith("dicom:")
    zeros = files["cyst", "0"] + files["lipoma", "0"]
    assert [names[f] for f in zeros] == zeros
    assert len(set(ds.groups)) == 4 + 3 and not ds.has_patient_ids
    assert ds.notes[0].endswith("12 DICOM image(s) are grouped by their PatientID into 4 patient(s) (named "
                                "dicom:<hash of the ID>; the ID is not shown); the 3 other image(s) (3 DICOM whose "
                                "PatientID is on two or more classes) name no patient, and each of them counts as its "
                                f"own patient: {LEAK}; add a manifest.csv with patient_id (docs/synth.md)")
    assert ONE_PATIENT_PER_IMAGE not in "\n".join(ds.notes)       # patients were read: not "each image"
    assert "on 3 images of cyst, lipoma" in ds.notes[1]
    # a value on one class only is a patient, however many files (a patient scanned many times)
    _patients(tmp_path / "one_class", {"cyst": {"ANON": 5, "P2": 2}, "lipoma": {"P3": 2, "P4": 2}})
    ds = load_dataset(tmp_path / "one_class")
    assert len(set(ds.groups)) == 4 and ds.has_patient_ids


def test_an_empty_or_missing_patient_id_leaves_that_file_its_own_patient(tmp_path):
    files = _patients(tmp_path, {"cyst": {"P1": 3, "P2": 3, "": 2}, "lipoma": {"P3": 3, "P4": 3}})
    _dicom(tmp_path / "lipoma" / "no_tag.dcm", None, 50)             # no PatientID element at all
    _dicom(tmp_path / "lipoma" / "blank.dcm", "   ", 51)              # spaces only: empty
    ds = load_dataset(tmp_path)
    names = _by_name(ds)
    unnamed = files["cyst", ""] + ["lipoma/no_tag.dcm", "lipoma/blank.dcm"]
    assert [names[f] for f in unnamed] == unnamed
    assert len({names[f] for f in files["lipoma", "P3"]}) == 1
    assert not ds.has_patient_ids and len(set(ds.groups)) == 4 + 4
    assert "12 DICOM image(s) are grouped by their PatientID into 4 patient(s)" in ds.notes[0]
    assert "the 4 other image(s) (4 DICOM without a readable PatientID) name no patient" in ds.notes[0]
    assert len(ds.notes) == 1


def test_png_beside_dicom_png_images_stay_their_own_patient_and_the_note_counts_both(tmp_path):
    files = _patients(tmp_path, {"cyst": {"P1": 3, "P2": 2}, "lipoma": {"P3": 2, "P4": 2}})
    k = 100
    for i in range(3):
        _png(tmp_path / "cyst" / f"scan{i}.png", k + i)
    _png(tmp_path / "lipoma" / "scan9.png", k + 9)
    ds = load_dataset(tmp_path)
    names = _by_name(ds)
    assert [names[f"cyst/scan{i}.png"] for i in range(3)] == [f"cyst/scan{i}.png" for i in range(3)]
    assert len({names[f] for f in files["cyst", "P1"]}) == 1
    assert len(set(ds.groups)) == 4 + 4 and not ds.has_patient_ids
    assert ds.notes == [f"{tmp_path.name} has no manifest.csv: 9 DICOM image(s) are grouped by their PatientID into 4 "
                        "patient(s) (named dicom:<hash of the ID>; the ID is not shown); the 4 other image(s) (4 not "
                        "DICOM) name no patient, and each of them counts as its own patient: "
                        f"{LEAK}; add a manifest.csv with patient_id (docs/synth.md)"]
    # PNGs only: as before
    for i in range(2):
        _png(tmp_path / "png" / "a" / f"{i}.png", i)
        _png(tmp_path / "png" / "b" / f"{i}.png", 10 + i)
    ds = load_dataset(tmp_path / "png")
    assert ds.notes == [f"png has no manifest.csv: {ONE_PATIENT_PER_IMAGE}; add a manifest.csv with patient_id "
                        "(docs/synth.md)"] and not ds.has_patient_ids


def test_a_truncated_or_empty_dicom_loads_as_its_own_patient_without_a_traceback(tmp_path):
    """The header is read when the data set is loaded; a damaged file is reported when its pixels are read."""
    files = _patients(tmp_path, {"cyst": {"P1": 3, "P2": 3}, "lipoma": {"P3": 3, "P4": 3}})
    data = (tmp_path / files["cyst", "P1"][0]).read_bytes()
    (tmp_path / "cyst" / "head_cut.dcm").write_bytes(data[:300])          # ends inside the header
    (tmp_path / "cyst" / "preamble_only.dcm").write_bytes(data[:100])
    (tmp_path / "lipoma" / "empty.dcm").write_bytes(b"")
    (tmp_path / "cyst" / "pixels_cut.dcm").write_bytes(data[:len(data) - 500])   # header whole, pixels cut
    ds = load_dataset(tmp_path)
    names = _by_name(ds)
    damaged = ["cyst/head_cut.dcm", "cyst/preamble_only.dcm", "lipoma/empty.dcm"]
    assert [names[f] for f in damaged] == damaged
    assert names["cyst/pixels_cut.dcm"] == names[files["cyst", "P1"][0]]        # P1's header: P1's patient
    assert len(set(ds.groups)) == 4 + 3 and not ds.has_patient_ids
    assert "the 3 other image(s) (3 DICOM without a readable PatientID) name no patient" in ds.notes[0]


def _no_image(path: Path, patient_id: str, keyword: str, value: str) -> None:
    """A DICOM without Image Pixel module, with one of its own attributes after it (group 0040 or 0070)."""
    import pydicom

    make_dicom(path, None, patient_id=patient_id)
    ds = pydicom.dcmread(path)
    setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def test_reports_and_presentation_states_of_a_pacs_export_are_left_out(tmp_path):
    """A structured report or presentation state (no Rows/Columns) beside the images, without a suffix as PACS
    exports write them: it was an image of its class, counted as grouped, and `usedge train` stopped at the first
    one ("DICOM file has no image"), the next run at the next (outside audit)."""
    for cls, pids in (("cyst", ("P1", "P2")), ("lipoma", ("P3", "P4"))):
        for k, pid in enumerate(pids):
            for i in range(2):
                _dicom(tmp_path / cls / pid / "ST1" / f"IM{i:04d}", pid, 10 * k + i)
            _no_image(tmp_path / cls / pid / "ST1" / "SR0001", pid, "ValueType", "CONTAINER")   # a report's content
    _no_image(tmp_path / "cyst" / "P1" / "PR0001", "P1", "ContentLabel", "ANNOTATION")      # a presentation state
    ds = load_dataset(tmp_path)
    assert len(ds) == 8 and not [s for s in ds.samples if s.path.name.startswith(("SR", "PR"))]
    assert ds.notes[0].endswith("8 DICOM image(s) are grouped by their PatientID into 4 patient(s) (named "
                                "dicom:<hash of the ID>; the ID is not shown)")
    assert ds.notes[1].startswith("5 DICOM file(s) hold no image (a structured report, presentation state or "
                                  "key-object note: no Rows/Columns) and are not read (e.g. cyst/P1/PR0001)")
    assert ds.has_patient_ids and len(set(ds.groups)) == 4


def test_ids_differing_only_in_case_and_one_id_over_several_patient_folders_are_named(tmp_path):
    """`ab123XQ` beside `AB123XQ` (one patient typed two ways) was split over two folds without a word; one
    `ANONYMOUS` over four patient folders of a class was one patient without a word, and a class of it alone
    was told "add patients" (outside audit). Both are named by their pseudonyms; the IDs never show."""
    for pid, folder, n in (("ab123XQ", "a", 2), ("AB123XQ", "b", 2), ("P2", "c", 2)):
        for i in range(n):
            _dicom(tmp_path / "cyst" / folder / f"IM{i}", pid, i)
    for k in range(4):
        for i in range(3):
            _dicom(tmp_path / "lipoma" / f"patient{k}" / f"IM{i}", "ANONYMOUS", 10 * k + i)
    ds = load_dataset(tmp_path)
    names = _by_name(ds)
    case = next(n for n in ds.notes if "differ only in case" in n)
    assert names["cyst/a/IM0"] != names["cyst/b/IM0"] and names["cyst/a/IM0"] in case and names["cyst/b/IM0"] in case
    spread = next(n for n in ds.notes if "subfolders of its class" in n)
    anon = names["lipoma/patient0/IM0"]
    assert spread.startswith(f"PatientID {anon} is on images in 4 subfolders of its class (e.g. patient0, patient1, "
                             "patient2)") and "manifest.csv" in spread
    with pytest.raises(DataError, match=f"class lipoma has 1 patient \\(its 12 images share one DICOM PatientID, "
                                        f"{anon}: an anonymiser's placeholder"):
        make_splits(ds, folds=2, seed=0)
    _no_id_shown(ds, "ab123XQ", "AB123XQ", "ANONYMOUS")
