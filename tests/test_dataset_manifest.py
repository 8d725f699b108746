"""A user's data set (usedge.dataset, usedge.train.cv): what would silently mislead a training run is refused
with one line naming the manifest line, or said in a note; a data set too small for its folds is one line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from usedge.dataset import Dataset, Sample, load_dataset
from usedge.errors import DataError
from usedge.train.cv import few_patient_notes, make_splits


def copy_cohort(tiny_cohort, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    return data


def rows_of(data: Path) -> tuple[list[str], list[dict]]:
    with open(data / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def write_rows(data: Path, fields: list[str], rows: list[dict], *, encoding: str = "utf-8") -> None:
    with open(data / "manifest.csv", "w", newline="", encoding=encoding) as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_manifest_from_excel_with_a_byte_order_mark_loads(tiny_cohort, tmp_path):
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    write_rows(data, fields, rows, encoding="utf-8-sig")
    ds = load_dataset(data)
    assert len(ds) == 24 and ds.notes == []


def test_a_row_listed_twice_is_refused_with_both_lines(tiny_cohort, tmp_path):
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    write_rows(data, fields, rows + [dict(rows[3])])
    with pytest.raises(DataError, match=r"manifest.csv:26: .* is listed twice \(also on line 5\)"):
        load_dataset(data)


@pytest.mark.parametrize("typo", ["Lipoma", "lipoma ", " lipoma"])
def test_labels_that_differ_only_in_case_or_spaces_are_a_typo(tiny_cohort, tmp_path, typo):
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    k = next(i for i, r in enumerate(rows) if r["label"] == "lipoma")
    rows[k]["label"] = typo
    write_rows(data, fields, rows)
    if typo.strip() == "lipoma":         # spaces around a label are not part of it
        assert load_dataset(data).class_names == ["epidermal_cyst", "lipoma", "pilomatricoma"]
        return
    with pytest.raises(DataError, match=f"manifest.csv:{k + 2}: labels 'Lipoma' and 'lipoma' differ only in case"):
        load_dataset(data)


def test_class_folders_that_differ_only_in_case_are_refused(tiny_cohort, tmp_path):
    data = copy_cohort(tiny_cohort, tmp_path)
    (data / "manifest.csv").unlink()
    shutil.rmtree(data / "masks")
    (data / "Lipoma").mkdir()
    shutil.copy(next((data / "lipoma").glob("*.png")), data / "Lipoma" / "extra.png")
    with pytest.raises(DataError, match="class folders 'Lipoma' and 'lipoma' differ only in case"):
        load_dataset(data)


def test_patient_ids_empty_on_some_rows_are_refused_and_none_at_all_is_a_note(tiny_cohort, tmp_path):
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    rows[6]["patient_id"] = ""
    write_rows(data, fields, rows)
    with pytest.raises(DataError, match="manifest.csv:8: patient_id is empty here but set on other rows"):
        load_dataset(data)
    for r in rows:
        r["patient_id"] = ""
    write_rows(data, fields, rows)
    ds = load_dataset(data)
    assert len(set(ds.groups)) == 24 and any("own patient" in n for n in ds.notes)
    (data / "manifest.csv").unlink()                      # a plain ImageFolder says the same
    assert any("own patient" in n for n in load_dataset(data).notes)


def test_a_class_folder_the_manifest_leaves_out_is_a_note(tiny_cohort, tmp_path):
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    write_rows(data, fields, [r for r in rows if r["label"] != "lipoma"])
    ds = load_dataset(data)
    assert ds.class_names == ["epidermal_cyst", "pilomatricoma"]
    assert any("lists no image in the folder(s) lipoma" in n for n in ds.notes)
    for r in rows:                       # ./ before every path: the same folders, no other note
        r["path"] = "./" + r["path"]
    write_rows(data, fields, rows)
    assert not any("lists no image" in n for n in load_dataset(data).notes)
    assert not any("not listed" in n for n in load_dataset(data).notes)


def test_images_in_the_manifests_folders_that_it_does_not_list_are_a_note(tiny_cohort, tmp_path):
    """New scans copied into a class folder without a manifest row were left out without a word (outside audit)."""
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    write_rows(data, fields, rows[2:])
    notes = load_dataset(data).notes
    assert any(n.startswith("2 image file(s) in the folders manifest.csv uses are not listed in it") for n in notes), notes


def synthetic(counts: list[tuple[int, int]]) -> Dataset:
    """A Dataset of (patients, images per patient) per class (paths are not read by the splits)."""
    samples = [Sample(path=Path(f"c{c}/p{c}_{p}_{i}.png"), label=c, patient_id=f"p{c}_{p}")
               for c, (patients, per) in enumerate(counts) for p in range(patients) for i in range(per)]
    return Dataset(root=Path("data"), class_names=[f"c{c}" for c in range(len(counts))], samples=samples)


def test_a_class_with_one_patient_is_refused():
    with pytest.raises(DataError, match="class c2 has 1 patient: a fold that tests on it would train without it"):
        make_splits(synthetic([(8, 2), (8, 2), (1, 4)]), folds=2)


def test_a_data_set_too_small_for_the_inner_split_is_one_line_not_a_traceback():
    """2 folds of 2 patients x 1 image per class: scikit-learn's ValueError (the inner split's 5 parts)
    becomes a DataError that says what to change."""
    with pytest.raises(DataError, match="inner validation split splits in 5 parts, but no class has 5 images"):
        make_splits(synthetic([(4, 1), (4, 1), (4, 1)]), folds=2)


def test_classes_with_fewer_patients_than_folds_get_a_note():
    ds = synthetic([(8, 2), (8, 2), (3, 2)])
    assert few_patient_notes(ds, 5) == ["c2 has 3 patients, fewer than the 5 folds: some test folds hold none of "
                                        "it, and its per-fold figures are undefined there"]
    assert few_patient_notes(ds, 3) == []
    assert ds.class_counts() == [("c0", 16, 8), ("c1", 16, 8), ("c2", 6, 3)]


def test_test_predictions_csv_quotes_paths_and_patient_ids_with_commas(tmp_path):
    from usedge.train.trainer import _write_predictions

    ds = Dataset(root=tmp_path, class_names=["a", "b"],
                 samples=[Sample(path=tmp_path / "a" / "Doe, J 1.png", label=0, patient_id="MRN 1,p8")])
    _write_predictions(tmp_path / "p.csv", ds, np.array([0]), np.array([[0.25, 0.75]]), np.array([0]))
    row = next(csv.DictReader((tmp_path / "p.csv").open(newline="")))
    assert row == {"path": "a/Doe, J 1.png", "patient_id": "MRN 1,p8", "label": "a", "predicted": "b",
                   "p_a": "0.25", "p_b": "0.75"}


def test_model_card_names_the_models_own_classes():
    from usedge.export.model_card import intended_use, limits

    assert "(epidermal cyst, lipoma) beside" in intended_use(["epidermal_cyst", "lipoma"])
    assert limits(["a", "b"])[1].startswith("2 classes only")


def test_an_empty_label_is_one_line_naming_it(tiny_cohort, tmp_path):
    """An empty label cell used to make a class named '' (a 4th class, trained silently)."""
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    rows[6]["label"] = ""
    write_rows(data, fields, rows)
    with pytest.raises(DataError, match=rf"manifest.csv:8: empty label for {rows[6]['path']}"):
        load_dataset(data)


def test_blank_rows_and_windows_separators_are_read(tiny_cohort, tmp_path):
    """Excel's trailing ',,,,' rows are not rows; a path written with backslashes names the same file."""
    data = copy_cohort(tiny_cohort, tmp_path)
    fields, rows = rows_of(data)
    rows[0]["path"] = rows[0]["path"].replace("/", "\\")
    write_rows(data, fields, rows + [{k: "" for k in fields}] * 2)
    ds = load_dataset(data)
    assert len(ds) == 24 and ds.samples[0].path == data / rows[0]["path"].replace("\\", "/")


def test_image_folder_skips_hidden_files_and_run_folders_and_refuses_linked_repeats(tiny_cohort, tmp_path):
    """A data set without a manifest: a Mac's ._name.png copies and a usedge run written into the data folder
    (train DATA --out DATA/runs/r1, with its PNG plots) are not images of a class; an image linked under a
    second name would be a patient of its own in another fold."""
    data = copy_cohort(tiny_cohort, tmp_path)
    (data / "manifest.csv").unlink()
    first = sorted((data / "lipoma").rglob("*.png"))[0]
    (first.parent / f"._{first.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    run = data / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    shutil.copy(first, run / "roc.png")
    ds = load_dataset(data)
    assert ds.class_names == ["epidermal_cyst", "lipoma", "pilomatricoma"] and len(ds) == 24
    (data / "lipoma" / "link.png").symlink_to(first)
    with pytest.raises(DataError, match=rf"lipoma/link.png and lipoma/{first.name} are one image file \(a link\)"):
        load_dataset(data)


def test_a_blank_image_in_the_data_set_is_named(tiny_cohort, tmp_path):
    """A constant image (blank export) stops training with the file's name; it said only 'frame is blank'."""
    import cv2

    from usedge.errors import InputError
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import load_images

    data = copy_cohort(tiny_cohort, tmp_path)
    ds = load_dataset(data)
    blank = ds.samples[5].path
    cv2.imwrite(str(blank), np.full((64, 64), 100, np.uint8))
    with pytest.raises(InputError, match=rf"{blank.name}: frame is blank .* remove it from the data set"):
        load_images(ds.samples, PreprocessSpec(size=32), progress=False)


def test_a_tinted_image_filled_as_doppler_gets_a_note(tiny_cohort, tmp_path):
    """A B-mode image stored with a strong colour tint is more than half 'Doppler' and filled: training says
    so and how to keep it (it trained silently on a near-black fill)."""
    import cv2

    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import load_images
    from usedge.train.trainer import colour_note

    data = copy_cohort(tiny_cohort, tmp_path)
    ds = load_dataset(data)
    tinted = ds.samples[2].path
    g = cv2.imread(str(tinted), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(tinted), np.dstack([g, g // 2, g]))             # B = g, G = g/2, R = g: magenta-tinted B-mode
    _, infos = load_images(ds.samples, PreprocessSpec(size=32), progress=False, return_info=True)
    note = colour_note(ds.samples, infos)
    assert note.startswith("1 image(s) are more than 50% colour") and str(tinted) in note
    assert "data.remove_doppler=false" in note
    assert colour_note(ds.samples[3:], infos[3:]) == ""


def test_labels_in_two_unicode_forms_copies_under_two_patients_and_case_only_patient_ids(tmp_path):
    """`lipöm` typed as NFC and as NFD trained two classes of one name; a byte-identical copy of an image under
    another patient trained on one and tested on the other; patient IDs p0006 / P0006 split one patient."""
    import shutil
    import unicodedata

    import cv2
    import numpy as np

    from usedge.dataset import check_no_shared_images, load_dataset

    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"i{i}.png"), rng.integers(0, 255, (40, 40), np.uint8))
    nfc, nfd = unicodedata.normalize("NFC", "lipöm"), unicodedata.normalize("NFD", "lipöm")
    rows = ["path,label,patient_id", f"i0.png,{nfc},a", f"i1.png,{nfd},b", "i2.png,cyst,c", "i3.png,cyst,d"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="differ only in case, spaces or Unicode form"):
        load_dataset(tmp_path / "manifest.csv")
    shutil.copy(tmp_path / "i2.png", tmp_path / "copy.png")
    rows = ["path,label,patient_id", "i0.png,lipoma,a", "i1.png,lipoma,b", "i2.png,cyst,c", "copy.png,cyst,d",
            "i4.png,cyst,P0006", "i5.png,cyst,p0006"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "manifest.csv")
    assert any("'P0006' and 'p0006' differ only in case" in n for n in ds.notes)
    with pytest.raises(DataError, match="are the same image") as err:
        check_no_shared_images(ds)
    assert "i2.png" in str(err.value) and "copy.png" in str(err.value)


def test_resume_and_export_with_a_manifest_of_absolute_paths(tmp_path, monkeypatch):
    """A manifest listing absolute paths: the data hash is the same whether the folder is named relative or
    absolute (--resume said 'the data set differs' for the same data), the model card's digest does not crash
    on images outside the folder, and a fold's export finds its test images in folds.csv."""
    import cv2
    import numpy as np

    from usedge.dataset import load_dataset
    from usedge.export.images import split_from_run
    from usedge.export.model_card import data_digest
    from usedge.train.cv import folds_csv_text, make_splits
    from usedge.train.trainer import data_hash

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    rng = np.random.default_rng(1)
    rows = ["path,label,patient_id"]
    for i in range(30):
        where = elsewhere if i % 3 == 0 else data
        cv2.imwrite(str(where / f"i{i}.png"), rng.integers(0, 255, (30, 30), np.uint8))
        rows.append(f"{where / f'i{i}.png'},{'ab'[i % 2]},p{i}")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    relative, absolute = load_dataset(Path("data")), load_dataset(data)
    assert data_hash(relative) == data_hash(absolute)
    assert len(data_digest(absolute.samples, absolute.root)) == 64
    splits = make_splits(relative, folds=3, seed=0)
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "folds.csv").write_text(folds_csv_text(relative, splits))
    train, test = split_from_run(absolute.samples, absolute.root, run / "fold0" / "best.pt")
    assert sorted(str(s.path) for s in test) == sorted(str(absolute.samples[i].path) for i in splits[0].test)
    assert len(train) + len(test) == len(absolute)


def test_manifest_separators_and_header_spelling(tmp_path):
    """A manifest saved by a European Excel (';'), a tab-separated one, and headers typed as 'Path, Label'
    read as the same data set (they were refused with a hint that did not say why)."""
    import cv2
    import numpy as np

    from usedge.dataset import load_dataset

    rng = np.random.default_rng(2)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"i{i}.png"), rng.integers(0, 255, (20, 20), np.uint8))
    rows = [("i0.png", "a", "p0"), ("i1.png", "a", "p1"), ("i2.png", "b", "p2"), ("i3.png", "b", "p3")]
    for name, sep, header in (("semi", ";", "path;label;patient_id"), ("tab", "\t", "path\tlabel\tpatient_id"),
                              ("caps", ",", "Path, Label ,Patient_ID")):
        (tmp_path / f"{name}.csv").write_text("\n".join([header] + [sep.join(r) for r in rows]) + "\n")
        ds = load_dataset(tmp_path / f"{name}.csv")
        assert [s.patient_id for s in ds.samples] == ["p0", "p1", "p2", "p3"] and ds.class_names == ["a", "b"]
    (tmp_path / "bad.csv").write_text("file,class\ni0.png,a\n")
    with pytest.raises(DataError, match="its header reads: file,class"):
        load_dataset(tmp_path / "bad.csv")
