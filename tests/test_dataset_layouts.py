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
    cv2.imwrite(str(path), (img > 200).astype(np.uint8) * 255 if mask else img)


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
    assert note.startswith("8 file(s) named like their image plus _mask") and "1 image(s) have more than one" in note


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
