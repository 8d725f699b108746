"""The explain job end to end on real files: a tiny data set with lesion masks and a real checkpoint."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from usedge.dataset import Sample, write_manifest
from usedge.errors import ConfigError, DataError
from usedge.runtime.crop import CropInfo, crop_mask
from usedge.runtime.preprocess import PreprocessSpec
from usedge.train.explain import ExplainConfig, read_lesion_mask, run_explain

CLASSES = ["epidermal_cyst", "lipoma", "pilomatricoma"]


def _make_data(root, n=9, masks=True, size=(90, 120)):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = CLASSES[i % 3]
        h, w = size
        img = rng.integers(0, 80, size, dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        cv2.ellipse(mask, (int(rng.integers(25, w - 25)), int(rng.integers(20, h - 20))), (14, 9), 0, 0, 360, 255, -1)
        img[mask > 0] += 100
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"img{i}.png"), img)
        row = {"path": f"{label}/img{i}.png", "label": label, "patient_id": f"p{i}"}
        if masks:
            cv2.imwrite(str(root / label / f"img{i}_mask.png"), mask)
            row["mask_path"] = f"{label}/img{i}_mask.png"
        rows.append(row)
    write_manifest(root / "manifest.csv", rows)
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from usedge.train.checkpoint import save_checkpoint
    from usedge.train.model import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("explain_model") / "model.pt"
    save_checkpoint(path, build_model("ag_resnet18"), class_names=CLASSES, preprocess=PreprocessSpec(size=64))
    return path


@pytest.fixture(scope="module")
def tiny_masked_data(tmp_path_factory):
    return _make_data(tmp_path_factory.mktemp("explain_data"))


def test_run_explain_writes_everything(tiny_model, tiny_masked_data, tmp_path):
    out = tmp_path / "out"
    summary = run_explain(tiny_model, tiny_masked_data, out, ExplainConfig(progress=False, sheet_rows=2))
    for name in ("explain.json", "explain.md", "per_image.csv"):
        assert (out / name).is_file()
    assert sorted(p.name for p in (out / "sheets").iterdir()) == [f"{c}.png" for c in CLASSES]
    overlays = sorted((out / "overlays").rglob("*.png"))
    assert (out / "overlays" / "lipoma" / "img1.png").is_file()
    assert len(overlays) == 9
    strip = cv2.imread(str(overlays[0]))
    assert strip.shape[1] == 5 * strip.shape[0]  # image + 4 maps
    sheet = cv2.imread(str(out / "sheets" / "lipoma.png"))
    assert sheet.shape[0] == 2 * strip.shape[0]
    data = json.loads((out / "explain.json").read_text())
    assert data == json.loads(json.dumps(summary, default=str))
    assert data["data"]["n_images"] == 9 and data["data"]["n_with_lesion"] == 9
    assert set(data["localisation"]) == {"cam", "gradcam", "att1", "att2"}
    p_values = []
    for res in data["localisation"].values():
        for b in ("centre", "others"):
            for s in ("energy_inside", "topk_iou", "pointing_game", "energy_below"):
                t = res["tests"][b][s]
                assert 0.0 <= t["p_value"] <= t["p_holm"] <= 1.0 and -1.0 <= t["rank_biserial"] <= 1.0
                assert t["n_patients"] == 9 and t["ci_low"] <= t["mean_difference"] <= t["ci_high"]
                p_values.append(t["p_value"])
    assert len(p_values) == 4 * 2 * 4  # Holm covered the whole family of 32 tests
    assert min(t["p_holm"] for r in data["localisation"].values() for tb in r["tests"].values()
               for t in tb.values()) == pytest.approx(min(1.0, 32 * min(p_values)))
    assert {"forward", "cam", "gradcam", "att"} <= set(data["timing_ms"])
    md = (out / "explain.md").read_text()
    assert "| CAM | energy inside |" in md and "| CAM | energy below |" in md and "Holm" in md
    lines = (out / "per_image.csv").read_text().splitlines()
    assert len(lines) == 10 and "cam_energy_inside" in lines[0] and "centre:cam_topk_iou" in lines[0]


def test_explain_cli(tiny_model, tiny_masked_data, tmp_path):
    from typer.testing import CliRunner

    from usedge.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["explain", str(tiny_model), str(tiny_masked_data), "--out", str(out),
                                   "--maps", "cam,att1", "--overlays", "sheets", "--limit", "6"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "explain.json").read_text())
    assert set(data["localisation"]) == {"cam", "att1"} and data["data"]["n_images"] == 6
    assert not (out / "overlays").exists() and (out / "sheets").is_dir()


def test_data_without_masks_skips_localisation(tiny_model, tmp_path):
    data = _make_data(tmp_path / "nomask", n=3, masks=False)
    summary = run_explain(tiny_model, data, tmp_path / "out", ExplainConfig(progress=False, overlays="none",
                                                                           maps=("cam",)))
    assert summary["localisation"] == {} and summary["data"]["n_with_lesion"] == 0
    assert "not measured" in (tmp_path / "out" / "explain.md").read_text()


def test_an_empty_or_broken_mask_explains_that_image_without_a_lesion_and_goes_on(tiny_model, tmp_path):
    """BUSI's `normal` images have all-black masks, and one broken mask file in a thousand ended the whole run."""
    data = _make_data(tmp_path / "data", n=4)
    cv2.imwrite(str(data / "lipoma" / "img1_mask.png"), np.zeros((90, 120), np.uint8))
    (data / "epidermal_cyst" / "img3_mask.png").write_bytes(b"not a png")
    summary = run_explain(tiny_model, data, tmp_path / "out", ExplainConfig(progress=False, overlays="none",
                                                                           maps=("cam",)))
    assert summary["data"]["n_images"] == 4 and summary["data"]["n_with_lesion"] == 2
    assert "1 image(s) have an empty lesion mask (no lesion, as BUSI's normal images have; e.g. lipoma/img1_mask.png): " \
           "explained, not scored" in summary["notes"]
    note = next(n for n in summary["notes"] if "without a lesion" in n)
    assert note.startswith("1 image(s) explained without a lesion, as their mask or box could not be used (first: ")
    assert "img3_mask.png: cannot read lesion mask" in note


def test_mask_follows_the_image_crop():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 120:160] = True                      # lesion in frame pixels
    info = CropInfo(frame_shape=(100, 200), fov_box=(0, 0, 200, 100), crop_box=(100, 0, 100, 100))
    m = crop_mask(mask, info, 50) > 0               # crop x 100..200, then 100 -> 50 px
    ys, xs = np.nonzero(m)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 29, 10, 29)
    # a crop box reaching past the frame (x 150..250, y -50..50): zero outside the frame
    info = CropInfo(frame_shape=(100, 200), fov_box=(0, 0, 200, 100), crop_box=(150, -50, 100, 100))
    m = crop_mask(mask, info, 100) > 0
    assert m.shape == (100, 100) and m.sum() == 10 * 10 and m[90:100, 0:10].all()  # frame y 40..50, x 150..160


def test_mask_errors_and_bbox(tmp_path):
    bad = tmp_path / "m.png"
    cv2.imwrite(str(bad), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="size"):
        read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", mask_path=bad), (20, 20))
    with pytest.raises(DataError, match="cannot read"):
        read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", mask_path=tmp_path / "no.png"),
                         (20, 20))
    m, src = read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", bbox=(2, 3, 4, 5)), (20, 20))
    assert src == "bbox" and m.sum() == 20 and m[3:8, 2:6].all()
    # a 16-bit 0/1 mask (read as 8-bit gray it was all zeros: "no lesion masks") and a colour one are read as drawn
    for name, drawn in (("m16.png", np.uint16), ("rgb.png", np.uint8)):
        mask = np.zeros((20, 20, 3) if name == "rgb.png" else (20, 20), drawn)
        mask[4:9, 5:10] = 1
        cv2.imwrite(str(tmp_path / name), mask)
        m, src = read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", mask_path=tmp_path / name),
                                  (20, 20))
        assert src == "mask" and m.sum() == 25 and m[4:9, 5:10].all()
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((20, 20), np.uint8))   # it dropped the image from the tests silently
    with pytest.raises(DataError, match="empty.png: lesion mask is empty"):
        read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", mask_path=tmp_path / "empty.png"),
                         (20, 20))
    # boxes that used to pass silently: outside (no lesion at all), empty, or the whole image (a perfect score)
    assert read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", bbox=(-1, 2, 6, 6)),
                            (20, 20))[0].sum() == 5 * 6                  # a pixel over the edge: its part inside
    for box, why in (((5000, 5000, 10, 10), "lies mostly outside the 20x20 image"), ((-15, -15, 20, 20), "outside"),
                     ((10, 10, 0, 0), "is empty"), ((0, 0, 20, 20), "covers 100% of the image")):
        with pytest.raises(DataError, match=rf"x.png: lesion bbox .* {why}"):
            read_lesion_mask(Sample(path=tmp_path / "x.png", label=0, patient_id="p", bbox=box), (20, 20))


def test_bad_config_is_a_config_error():
    for cfg in (ExplainConfig(maps=("nope",)), ExplainConfig(target="x"), ExplainConfig(topk="2"),
                ExplainConfig(overlays="some")):
        with pytest.raises(ConfigError):
            cfg.validate()


def test_attention_maps_of_a_plain_resnet_are_refused(tmp_path, tiny_masked_data):
    import torch

    from usedge.train.checkpoint import save_checkpoint
    from usedge.train.model import build_model

    torch.manual_seed(0)
    path = tmp_path / "plain.pt"
    save_checkpoint(path, build_model("resnet18"), class_names=CLASSES, preprocess=PreprocessSpec(size=64))
    with pytest.raises(ConfigError, match="attention"):
        run_explain(path, tiny_masked_data, tmp_path / "o", ExplainConfig(maps=("att1",), progress=False))
    s = run_explain(path, tiny_masked_data, tmp_path / "o2", ExplainConfig(progress=False, overlays="none", limit=4))
    assert set(s["localisation"]) == {"cam", "gradcam"}


def _fake_run(tmp_path, data, tiny_model, fold_of_patient: dict, fold=0):
    """A run folder as usedge train writes it (run.json, folds.csv, fold0/best.pt) around the tiny model."""
    import shutil

    from usedge.dataset import load_dataset
    from usedge.train.checkpoint import read_checkpoint, save_checkpoint
    from usedge.train.model import build_model

    ds = load_dataset(data)
    run = tmp_path / "run"
    (run / f"fold{fold}").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"data": str(ds.root)}))
    lines = ["path,label,patient_id,test_fold,fold0,final"]
    for s in ds.samples:
        k = fold_of_patient[s.patient_id]
        role = "test" if k == fold else "train"
        lines.append(f"{s.path.relative_to(ds.root)},{ds.class_names[s.label]},{s.patient_id},{k},{role},train")
    (run / "folds.csv").write_text("\n".join(lines) + "\n")
    payload = read_checkpoint(tiny_model)
    model = build_model("ag_resnet18")
    model.load_state_dict(payload["state_dict"])
    save_checkpoint(run / f"fold{fold}" / "best.pt", model, class_names=CLASSES, preprocess=PreprocessSpec(size=64),
                    extra={"fold": fold})
    save_checkpoint(run / "model.pt", model, class_names=CLASSES, preprocess=PreprocessSpec(size=64))
    shutil.copy(tiny_model, tmp_path / "elsewhere.pt")
    return run


def test_explain_keeps_the_test_fold_of_a_fold_checkpoint(tiny_model, tiny_masked_data, tmp_path):
    """A fold model is explained on its test fold only (the patients it never saw), unless --images all;
    the all-data model.pt saw every patient and is refused on its own data set."""
    test_patients = {"p0", "p1", "p2", "p3"}
    run = _fake_run(tmp_path, tiny_masked_data, tiny_model, {f"p{i}": 0 if f"p{i}" in test_patients else 1
                                                             for i in range(9)})
    cfg = ExplainConfig(progress=False, overlays="none", maps=("cam",))
    s = run_explain(run / "fold0" / "best.pt", tiny_masked_data, tmp_path / "a", cfg)
    assert s["data"]["n_images"] == 4 and "fold 0's test part" in s["data"]["images"]
    rows = (tmp_path / "a" / "per_image.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(f"{['epidermal_cyst', 'lipoma', 'pilomatricoma'][i % 3]}"
                                                          f"/img{i}.png" for i in range(4))
    every = run_explain(run / "fold0" / "best.pt", tiny_masked_data, tmp_path / "b",
                        ExplainConfig(progress=False, overlays="none", maps=("cam",), images="all"))
    assert every["data"]["n_images"] == 9
    with pytest.raises(DataError, match="every patient"):
        run_explain(run / "model.pt", tiny_masked_data, tmp_path / "c", cfg)
    # a checkpoint with no run around it explains every image
    assert run_explain(tmp_path / "elsewhere.pt", tiny_masked_data, tmp_path / "d", cfg)["data"]["n_images"] == 9
    # a copy of the run's data set is still its patients (matched by ID): the fold's test part only, the
    # all-data model refused (a copied folder was explained whole, training patients included)
    import shutil

    copy = shutil.copytree(tiny_masked_data, tmp_path / "copy")
    s = run_explain(run / "fold0" / "best.pt", copy, tmp_path / "e", cfg)
    assert s["data"]["n_images"] == 4 and "matched by patient ID and by image" in s["data"]["images"]
    with pytest.raises(DataError, match="every patient"):
        run_explain(run / "model.pt", copy, tmp_path / "f", cfg)
    # a copy without its manifest: each image its own patient, so no ID matches the run's; the images are
    # still the run's, by path and by bytes (every image was explained as "never seen"; outside audit)
    (copy / "manifest.csv").unlink()
    for mask in copy.rglob("*_mask.png"):          # (a plain folder would take them for images)
        mask.unlink()
    s = run_explain(run / "fold0" / "best.pt", copy, tmp_path / "g", cfg)
    assert s["data"]["n_images"] == 4
    renamed = tmp_path / "renamed"
    for i, src in enumerate(sorted(copy.rglob("*.png"))):
        (renamed / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, renamed / src.parent.name / f"scan{i}.png")
    assert run_explain(run / "fold0" / "best.pt", renamed, tmp_path / "h", cfg)["data"]["n_images"] == 4
    with pytest.raises(DataError, match="every patient"):
        run_explain(run / "model.pt", renamed, tmp_path / "i", cfg)


def test_a_map_too_coarse_to_localise_is_named_and_a_flat_one_is_not_scored(tiny_masked_data, tmp_path):
    """At a 32 px input Grad-CAM (layer4, H/32) is a 1x1 map: flat once resized, so scoring it would
    report a flat map's localisation as the model's. It is left out with a note; coarse maps get a note."""
    import torch

    from usedge.train.checkpoint import save_checkpoint
    from usedge.train.model import build_model

    torch.manual_seed(0)
    path = tmp_path / "m32.pt"
    save_checkpoint(path, build_model("ag_resnet18"), class_names=CLASSES, preprocess=PreprocessSpec(size=32))
    out = tmp_path / "out"
    summary = run_explain(path, tiny_masked_data, out, ExplainConfig(progress=False, overlays="none", n_boot=50))
    assert summary["method"]["map_grids"] == {"cam": "4x4", "gradcam": "1x1", "att1": "4x4", "att2": "2x2"}
    assert set(summary["localisation"]) == {"cam", "att1", "att2"}
    notes = " | ".join(summary["notes"])
    assert "Grad-CAM is a 1x1 map" in notes and "not measured" in notes and "attention 2 is a 2x2 map" in notes
    assert "CAM is a 4x4" not in notes
    md = (out / "explain.md").read_text()
    assert "Grad-CAM is a 1x1 map" in md and "| Grad-CAM |" not in md


def test_limit_takes_the_classes_in_turn_not_the_first_class():
    """`--limit N` kept the first N images: a data set listing its classes one after another gave one class."""
    from pathlib import Path

    from usedge.train.explain import spread_over_classes

    samples = [Sample(Path(f"{c}{i}.png"), label=c, patient_id=f"{c}-{i}") for c in (0, 1, 2) for i in range(5)]
    got = spread_over_classes(samples, 7)
    assert [s.label for s in got] == [0, 0, 0, 1, 1, 2, 2]          # 3 rounds over 3 classes, in data order
    assert [s.path.name for s in got] == ["00.png", "01.png", "02.png", "10.png", "11.png", "20.png", "21.png"]
    uneven = samples[:1] + samples[5:]                                  # one image of class 0
    assert [s.label for s in spread_over_classes(uneven, 5)] == [0, 1, 1, 2, 2]
    assert spread_over_classes(samples, 100) == samples and spread_over_classes([], 3) == []


def test_an_image_whose_map_is_flat_is_not_scored_and_not_drawn_hot(tiny_masked_data, tmp_path, monkeypatch):
    """A Grad-CAM that is one value everywhere (all gradients negative: zero after its ReLU) was scored (energy
    inside = the lesion's area fraction, a pointing game of the same) and drawn as solid red (outside audit).
    The model runs as is; only its Grad-CAM of the first two images is replaced by a flat map."""
    import torch

    import usedge.train.explain as ex
    from usedge.train.checkpoint import save_checkpoint
    from usedge.train.localisation import is_flat
    from usedge.train.model import build_model

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model("ag_resnet18"), class_names=CLASSES, preprocess=PreprocessSpec(size=64))
    real, calls = ex.compute_maps, []

    def first_two_flat(model, x, maps, target, weighting):
        out = real(model, x, maps, target, weighting)
        calls.append(1)
        if len(calls) in (2, 3):                      # call 1 is the warm-up
            out[0]["gradcam"] = np.zeros_like(out[0]["gradcam"])
        return out
    monkeypatch.setattr(ex, "compute_maps", first_two_flat)
    summary = run_explain(path, tiny_masked_data, tmp_path / "o", ExplainConfig(progress=False, overlays="none",
                                                                                  maps=("cam", "gradcam"), n_boot=50))
    n = summary["data"]["n_with_lesion"]
    assert summary["localisation"]["gradcam"]["flat_images"] == 2 and summary["localisation"]["gradcam"]["images"] == n - 2
    assert summary["localisation"]["cam"]["flat_images"] == 0
    assert any("Grad-CAM: 2 of" in note and "flat" in note for note in summary["notes"])
    rows = list(__import__("csv").DictReader((tmp_path / "o" / "per_image.csv").open()))
    assert [r["gradcam_energy_inside"] == "" for r in rows[:2]] == [True, True] and rows[2]["gradcam_energy_inside"]
    assert is_flat(np.zeros((4, 4))) and not is_flat(np.eye(4))
    assert ex.colourise(np.zeros((4, 4))).tolist() == ex.colourise(np.full((4, 4), 0.0)).tolist()
    assert (ex.colourise(np.full((4, 4), 3.0)) == cv2.applyColorMap(np.zeros((4, 4), np.uint8), cv2.COLORMAP_JET)).all()
