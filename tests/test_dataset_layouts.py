"""Data sets as they are downloaded (public ultrasound sets, zips from a Mac), given to load_dataset as is:
it trains on exactly the images of each class, or refuses in one line saying what to pass instead."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from usedge.dataset import load_dataset, split_masks
from usedge.errors import DataError


def _image(path: Path, seed: int, mask: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    img = (img > 200).astype(np.uint8) * 255 if mask else img
    ok, data = cv2.imencode(".jpg" if path.suffix in (".jfif", ".jpe") else path.suffix, img)   # no .jfif writer
    path.write_bytes(data.tobytes())


def test_busi_style_masks_beside_their_images_are_masks_not_images(tmp_path):
    """BUSI writes `benign (1)_mask.png` (and `_mask_1.png` for a second lesion) beside `benign (1).png`: trained as
    images they were a class's silhouettes, and an empty `normal` mask a black image of its class."""
    for c, k in (("benign", 0), ("malignant", 10)):
        for i in range(1, 4):
            _image(tmp_path / c / f"{c} ({i}).png", k + i)
            _image(tmp_path / c / f"{c} ({i})_mask.png", k + i, mask=True)
    _image(tmp_path / "benign" / "benign (2)_mask_1.png", 99, mask=True)
    _image(tmp_path / "malignant" / "lonely_mask.png", 98)      # no image `lonely` beside it: an image
    _image(tmp_path / "malignant" / "scan7.JPG", 97)
    _image(tmp_path / "malignant" / "scan7_seg.png", 97, mask=True)   # another extension than its image
    ds = load_dataset(tmp_path)
    names = sorted(s.path.name for s in ds.samples)
    assert names == ["benign (1).png", "benign (2).png", "benign (3).png", "lonely_mask.png", "malignant (1).png",
                     "malignant (2).png", "malignant (3).png", "scan7.JPG"]
    masks = {s.path.name: s.mask_path.name if s.mask_path else None for s in ds.samples}
    assert masks["benign (2).png"] == "benign (2)_mask.png" and masks["scan7.JPG"] == "scan7_seg.png"
    assert masks["lonely_mask.png"] is None
    note = next(n for n in ds.notes if "lesion masks" in n)
    assert note.startswith("8 file(s) named like their image plus a mask suffix") and "1 image(s) have more than one" in note


def test_split_masks_keeps_a_mask_like_name_without_its_image_and_one_folder_only(tmp_path):
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x_mask.png", tmp_path / "a" / "y_gt.png"]
    images, masks = split_masks(files)
    assert images == files and masks == {}


@pytest.mark.parametrize("split", ["train", "Test", "validation"])
def test_a_data_set_in_splits_is_refused_not_trained_as_split_classes(tmp_path, split):
    """train/<class>, test/<class> (a Kaggle download): the split names were the classes, a split-vs-split model."""
    for k, (s, c) in enumerate([(split, "benign"), (split, "malignant"), ("other", "benign"), ("other", "malignant")]):
        _image(tmp_path / s / c / f"{k}.png", k)
    with pytest.raises(DataError, match=rf"{split} look like the splits of a data set \(holding the class folders "
                                        r"benign, malignant\), not classes — put each class's images"):
        load_dataset(tmp_path)


def test_one_folder_holding_the_class_folders_names_the_folder_to_pass(tmp_path):
    for k, c in enumerate(("benign", "malignant")):
        _image(tmp_path / "Dataset_BUSI_with_GT" / c / f"{k}.png", k)
    with pytest.raises(DataError, match=r"the only folder, Dataset_BUSI_with_GT, holds the class folders "
                                        r"\(benign, malignant\) — pass .*Dataset_BUSI_with_GT as the data set"):
        load_dataset(tmp_path)


def test_one_class_is_refused_and_an_unzips_macosx_folder_is_not_a_class(tmp_path):
    _image(tmp_path / "lipoma" / "a.png", 1)
    (tmp_path / "__MACOSX" / "lipoma").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "lipoma" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    with pytest.raises(DataError, match=r"one class \(lipoma\): a classifier needs images of at least two"):
        load_dataset(tmp_path)
    _image(tmp_path / "cyst" / "b.png", 2)
    assert load_dataset(tmp_path).class_names == ["cyst", "lipoma"]


def test_per_patient_subfolders_get_a_note_that_they_are_not_read_as_patients(tmp_path):
    """`<class>/<patient>/<image>` (a hospital export): each image is still its own patient, so one patient's
    images can be split between training and test; the note says how to group them."""
    for k, (c, p) in enumerate([("cyst", "P001"), ("cyst", "P001"), ("lipoma", "P002"), ("lipoma", "P003")]):
        _image(tmp_path / c / p / f"{k}.png", k)
    ds = load_dataset(tmp_path)
    assert len({s.patient_id for s in ds.samples}) == 4
    note = next(n for n in ds.notes if "subfolders of their class folder" in n)
    assert note.startswith("4 image(s) lie in subfolders of their class folder (e.g. cyst/P001/0.png): if a subfolder")


def test_mask_folders_inside_and_beside_the_classes_nas_thumbnails_and_other_files(tmp_path):
    """<class>/images + <class>/masks (masks named as their images), a top-level GT/ or Masks/, a Synology @eaDir of
    thumbnails (copies of the test images), .jfif JPEGs and a readme: each was trained as images of a class."""
    for c, k in (("benign", 0), ("malignant", 20)):
        for i in range(3):
            _image(tmp_path / c / "images" / f"{i}.png", k + i)
            _image(tmp_path / c / "masks" / f"{i}.png", k + i, mask=True)
        _image(tmp_path / c / "@eaDir" / "0.png" / "SYNOFILE_THUMB_M.jpg", k + 9)
        _image(tmp_path / c / f"saved{k}.jfif", k + 10)
        (tmp_path / c / "readme.txt").write_text("scans of 2019")
    _image(tmp_path / "GT" / "benign" / "0.png", 50, mask=True)
    _image(tmp_path / "Masks" / "x.png", 51, mask=True)
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["benign", "malignant"]
    got = sorted(s.path.relative_to(tmp_path).as_posix() for s in ds.samples)
    assert got == sorted(f"{c}/{n}" for c, k in (("benign", 0), ("malignant", 20))
                         for n in ("images/0.png", "images/1.png", "images/2.png", f"saved{k}.jfif"))
    masks = {s.path.relative_to(tmp_path).as_posix(): s.mask_path for s in ds.samples}
    assert masks["benign/images/1.png"] == tmp_path / "benign" / "masks" / "1.png" and masks["benign/saved0.jfif"] is None
    assert any(n.startswith("6 file(s) in mask folders (benign/masks, malignant/masks) are not trained as images; 6 of "
                            "them") for n in ds.notes), ds.notes
    assert "left out 2 file(s) of other types in the folders (.txt 2); name a file to try it" in ds.notes
    assert not any("subfolders of their class folder" in n for n in ds.notes)      # images/ is not a patient


def test_ham10000_as_downloaded_flat_folders_numeric_classes_and_a_renamed_patient_column(tmp_path):
    ham = tmp_path / "ham"
    for part in (1, 2):
        _image(ham / f"HAM10000_images_part_{part}" / f"ISIC_{part}.jpg", part)
    (ham / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\n")
    note = next(n for n in load_dataset(ham).notes if "HAM10000_metadata.csv" in n)
    assert note.startswith("ham holds HAM10000_metadata.csv but no manifest.csv: the class folders are the classes "
                           "(HAM10000_images_part_1, HAM10000_images_part_2); if the labels")
    flat = tmp_path / "flat"
    for i in range(3):
        _image(flat / f"{i}.jpg", i)
    with pytest.raises(DataError, match=r"no class folders: 3 image\(s\) lie directly in the folder \(e.g. 0.jpg\)"):
        load_dataset(flat)
    numeric = tmp_path / "numeric"
    for i, c in enumerate(("0", "1", "2", "10")):
        _image(numeric / c / "a.png", 60 + i)
    ds = load_dataset(numeric)
    assert ds.class_names == ["0", "1", "10", "2"]
    assert "class folders sort as text, as in ImageFolder: 0, 1, 10, 2 (class_index 3 is folder 2)" in ds.notes
    for header, used in (("path,label,PatientID", True), ("path,label,Patient ID", True), ("path,label,subject_id", False)):
        (numeric / "manifest.csv").write_text(f"{header}\n0/a.png,0,P1\n1/a.png,1,P2\n2/a.png,2,P3\n10/a.png,10,P4\n")
        ds = load_dataset(numeric)
        assert ds.has_patient_ids is used and ({s.patient_id for s in ds.samples} == {"P1", "P2", "P3", "P4"}) is used
        if not used:
            assert any("its column 'subject_id' is not read: if it identifies patients, name it patient_id" in n
                       for n in ds.notes), ds.notes


def test_the_same_image_under_two_classes_says_so_instead_of_one_patient_id(tmp_path):
    _image(tmp_path / "benign" / "a.png", 1)
    _image(tmp_path / "malignant" / "b.png", 2)
    (tmp_path / "malignant" / "copy.png").write_bytes((tmp_path / "benign" / "a.png").read_bytes())
    from usedge.dataset import check_no_shared_images

    with pytest.raises(DataError, match=r"a.png \(benign\) and .*copy.png \(malignant\) are the same image under two "
                                        r"classes — keep the copy in its right class only"):
        check_no_shared_images(load_dataset(tmp_path))


def test_one_scan_saved_again_in_another_format_under_two_classes_or_patients_is_refused(tmp_path):
    """PNG -> BMP: other bytes, the same pixels; the byte check let both copies in, trained and tested under
    opposite labels (outside audit of data sets). The model inputs are compared once the images are read."""
    pytest.importorskip("torch")
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import load_images
    from usedge.train.trainer import check_no_repeated_inputs

    _image(tmp_path / "benign" / "3.png", 3)
    _image(tmp_path / "benign" / "4.png", 4)
    _image(tmp_path / "malignant" / "5.png", 5)
    cv2.imwrite(str(tmp_path / "malignant" / "copy_of_3.bmp"), cv2.imread(str(tmp_path / "benign" / "3.png")))
    ds = load_dataset(tmp_path)
    images = load_images(ds.samples, PreprocessSpec(size=32), progress=False)
    with pytest.raises(DataError, match=r"3.png and .*copy_of_3.bmp give the same model input: one scan stored twice "
                                        r"under two classes \(benign, malignant\)"):
        check_no_repeated_inputs(ds, images)
    (tmp_path / "malignant" / "copy_of_3.bmp").unlink()
    ds = load_dataset(tmp_path)
    check_no_repeated_inputs(ds, load_images(ds.samples, PreprocessSpec(size=32), progress=False))


def test_a_cine_in_a_data_set_is_said_to_train_on_its_first_frame(tmp_path):
    """The README says a cine gives every frame (infer); training read frame 1 of 30 and said nothing."""
    from usedge.runtime.crop import prepare_file
    from usedge.train.trainer import frames_note

    pages = [np.random.default_rng(i).integers(0, 255, (40, 50), dtype=np.uint8) for i in range(3)]
    path = tmp_path / "lipoma" / "loop.tiff"
    path.parent.mkdir(parents=True)
    assert cv2.imwritemulti(str(path), pages)
    _image(tmp_path / "cyst" / "still.png", 9)
    ds = load_dataset(tmp_path)
    infos = [prepare_file(s.path)[1] for s in ds.samples]
    assert "frame 1 of 3" in infos[1].notes and not any(n.startswith("frame") for n in infos[0].notes)
    assert frames_note(ds.samples, infos).startswith(f"1 file(s) hold several frames (e.g. {path}: frame 1 of 3): "
                                                     "training reads the first frame of each")


def test_scans_in_a_mask_named_folder_and_grey_level_twins_stay_images(tmp_path):
    """Patient folders named GT or Labels (initials), extra scans in <class>/labels, and `case0-annotation.png`
    grey-level copies beside their scans were dropped as masks (regression round): a folder's first file
    decides by its pixels (a mask: nearly all at its lowest or highest value)."""
    for c, k in (("a", 0), ("b", 10)):
        for i in range(2):
            _image(tmp_path / c / "GT" / f"{i}.png", k + i)                # scans of a patient with initials GT
            _image(tmp_path / c / "labels" / f"x{i}.png", k + 5 + i)       # extra scans
            _image(tmp_path / c / f"case{i}.png", k + 7 + i)
            _image(tmp_path / c / f"case{i}-annotation.png", k + 70 + i)   # a grey-level copy, not a mask
    ds = load_dataset(tmp_path)
    assert len(ds.samples) == 16 and all(s.mask_path is None for s in ds.samples)
    assert not any("lesion masks" in n or "mask folders" in n for n in ds.notes), ds.notes
