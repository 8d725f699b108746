"""The model card (export/model_card.py) and the one data-root field, on real fixtures: the tiny
export (synthetic tiny_cohort) and a real brief `cross_validate` run."""

from __future__ import annotations

import json
from pathlib import Path

from usedge.export.onnx_export import read_model_info
from usedge.runtime.model_info import ModelInfo, model_card_line

FILES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx")


def test_card_in_every_file_and_beside_it(tiny_onnx_dir, tiny_cohort):
    cards = [read_model_info(tiny_onnx_dir / name).model_card for name in FILES]
    assert cards[0] == cards[1] == cards[2]
    card = cards[0]
    data = card["training_data"]
    assert data["synthetic"] and data["path"] == str(tiny_cohort) and len(data["sha256"]) == 64
    assert sum(c["images"] for c in data["class_counts"].values()) == data["images"] == 24
    assert set(data["class_counts"]) == {"epidermal_cyst", "lipoma", "pilomatricoma"}
    checks = {c["check"]: c for c in card["checks"]}
    assert "fp16 vs fp32 (onnxruntime CPU)" in checks and "int8 vs fp32 accuracy (held-out)" in checks
    assert checks["int8 vs fp32 accuracy (held-out)"]["note"].startswith("ran on ")
    assert card["uncertain_margin"] == 0.2 and card["intended_use"] and card["limits"]
    text = (tiny_onnx_dir / "MODEL_CARD.md").read_text()
    for part in ("## Intended use", "## Training data", "## Cross-validation", "## Export checks", "## Limits",
                 data["sha256"], "synthetic"):
        assert part in text


def test_card_line(tiny_onnx_dir):
    line = model_card_line(read_model_info(tiny_onnx_dir / "model.int8.onnx"))
    assert "\n" not in line and line.startswith("int8 model ") and "SYNTHETIC data (24 images" in line
    assert "uncertain below margin 0.2" in line
    bare = ModelInfo.from_dict({"class_names": ["a", "b"], "input_size": 64})
    assert model_card_line(bare).startswith("no model card")


def test_card_line_leads_with_balanced_accuracy():
    """Overall accuracy flatters a model that favours the largest class: the headline is balanced
    accuracy, overall accuracy beside it; a card from before the balanced row keeps `CV accuracy`."""
    rows = {"overall accuracy": {"accuracy": [0.718, 0.056]}, "balanced accuracy": {"accuracy": [0.744, 0.095]}}
    card = ModelInfo.from_dict({"class_names": ["a", "b"], "input_size": 64,
                                "model_card": {"cross_validation": {"folds": 5, "rows": rows}}})
    assert "CV balanced accuracy 0.744 ± 0.095 (accuracy 0.718 ± 0.056) over 5 fold(s)" in model_card_line(card)
    del rows["balanced accuracy"]
    assert "CV accuracy 0.718 ± 0.056 over 5 fold(s)" in model_card_line(card)


def test_cv_table_and_data_root_from_a_real_training_run(tiny_train_run, tiny_cohort):
    from usedge.export.images import recorded_data
    from usedge.export.model_card import cv_table
    from usedge.train.checkpoint import read_checkpoint

    names = ["epidermal_cyst", "lipoma", "pilomatricoma"]
    table = cv_table(tiny_train_run / "model.pt", names)
    agg = json.loads((tiny_train_run / "metrics.json").read_text())["aggregate"]
    assert table["folds"] == agg["folds"] == 3
    assert table["rows"]["overall accuracy"]["accuracy"][0] == agg["overall_accuracy"]["mean"]
    assert table["rows"]["balanced accuracy"]["accuracy"] == [agg["balanced_accuracy"]["mean"],
                                                              agg["balanced_accuracy"]["sd"]]
    assert table["rows"]["lipoma"]["sensitivity"][0] == agg["per_class"]["lipoma"]["sensitivity"]["mean"]
    fold_table = cv_table(tiny_train_run / "fold0" / "best.pt", names)
    assert {k: v for k, v in fold_table.items() if k != "this_fold"} == table and "this_fold" not in table
    own = json.loads((tiny_train_run / "metrics.json").read_text())["folds"][0]["metrics"]
    assert fold_table["this_fold"] == {"name": "fold0", "test_images": own["n"], "accuracy": own["overall_accuracy"],
                                       "balanced_accuracy": own["balanced_accuracy"], "classes": 3,
                                       "balanced_classes": own["macro_classes"]["sensitivity"]}
    carried = read_checkpoint(tiny_train_run / "model.pt")["metrics"]["cross_validation"]
    assert carried["overall_accuracy_mean"] == agg["overall_accuracy"]["mean"]
    assert cv_table(tiny_train_run / "model.pt", names, carried) == table            # its own run's table
    other = dict(carried, overall_accuracy_mean=carried["overall_accuracy_mean"] + 0.1)   # a model copied from another run
    assert cv_table(tiny_train_run / "model.pt", names, other) == {"other_run": str(tiny_train_run / "metrics.json")}
    # another run with the same folds and mean accuracy (k/n on small test sets: common) but another AUC
    same_accuracy = dict(carried, macro_roc_auc_mean=carried["macro_roc_auc_mean"] + 0.06)
    assert cv_table(tiny_train_run / "model.pt", names, same_accuracy) == {"other_run": str(tiny_train_run / "metrics.json")}
    # the one data-root field: extra.data in model.pt, the run's run.json for a fold's best.pt
    for ckpt in (tiny_train_run / "model.pt", tiny_train_run / "fold0" / "best.pt"):
        assert recorded_data(read_checkpoint(ckpt), ckpt) == Path(tiny_cohort).resolve()   # absolute: any cwd


def test_a_fold_models_card_describes_what_it_trained_on(tiny_train_run, tiny_cohort):
    """A fold's best.pt trained on its fold's training and validation patients, not on the whole folder:
    its card counts those images, names the fold, and gives the fold's own test figures beside the run's."""
    from usedge.export.images import open_dataset, split_from_run
    from usedge.export.model_card import card_markdown, cv_table, describe_data

    names = ["epidermal_cyst", "lipoma", "pilomatricoma"]
    ckpt = tiny_train_run / "fold0" / "best.pt"
    ds = open_dataset(tiny_cohort, names)
    train, test = split_from_run(ds.samples, ds.root, ckpt)
    whole, fold = describe_data(ds), describe_data(ds, "fold0", train)
    assert fold["images"] == len(train) < whole["images"] == fold["data_set_images"] == len(ds.samples)
    assert fold["sha256"] == whole["sha256"] and "fold" not in whole
    assert sum(c["images"] for c in fold["class_counts"].values()) == len(train)
    assert not {s.patient_id for s in train} & {s.patient_id for s in test}
    card = {"training_data": fold, "cross_validation": cv_table(ckpt, names), "checks": [],
            "intended_use": "x", "limits": [], "uncertain_margin": 0.2}
    text = card_markdown(card, "line")
    assert f"fold0 of a cross-validation run: trained on {len(train)} of the folder's {len(ds.samples)} images" in text
    assert "This model is fold0's: on its own test fold" in text and "the table above is the whole run's" in text
    line = model_card_line(ModelInfo.from_dict({"class_names": names, "input_size": 64, "model_card": card}))
    assert f"({len(train)} images of fold0's training patients; data set sha256" in line


def test_data_given_at_export_that_is_not_the_training_data_is_not_called_so(tiny_export_checkpoint, tiny_cohort,
                                                                             tmp_path):
    """`usedge export model.pt --data OTHER`: the card said the model was trained on OTHER, and the report
    that its accuracy there was training accuracy (outside audit). The card describes the data the checkpoint
    recorded and names OTHER as the checks' images."""
    import shutil

    from usedge.export.pipeline import ExportOptions, run_export

    other = tmp_path / "other"
    shutil.copytree(tiny_cohort, other)
    rows = (other / "manifest.csv").read_text().splitlines()     # other images: a different data set
    (other / "manifest.csv").write_text("\n".join(rows[:-1]) + "\n")
    opts = dict(fp16=False, int8=False, parity_count=4, reference_count=0)
    report = run_export(tiny_export_checkpoint, tmp_path / "m", ExportOptions(data=other, **opts))
    card = read_model_info(tmp_path / "m" / "model.onnx").model_card["training_data"]
    assert card["path"] == str(tiny_cohort) and card["named_by"] == "the checkpoint"
    assert str(other) in card["checks_data"] and "not the training data" in card["checks_data"]
    assert "not the data set the checkpoint was trained on" in report.data["split"]
    text = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert f"the export checks ran on {other}" in text


def test_a_macro_mean_over_fewer_classes_says_so_in_the_card():
    """The run's report says "macro (1 of 3 classes per fold, 2 pooled)"; the card showed the bare mean
    (outside audit). The card's macro cells carry the same words."""
    from usedge.export.model_card import card_markdown

    cv = {"folds": 2, "source": "metrics.json", "rows": {"macro": {"f1": [0.497, 0.089], "roc_auc": [0.6, 0.1]}},
          "macro_coverage": {"f1": "1 of 3 classes per fold, 2 pooled"}}
    card = {"training_data": {"note": "x"}, "cross_validation": cv, "checks": [], "intended_use": "x", "limits": [],
            "uncertain_margin": 0.2}
    text = card_markdown(card, "line")
    assert "| macro | 0.497 ± 0.089 (1 of 3 classes per fold, 2 pooled) | 0.600 ± 0.100 |" in text


def test_card_of_real_data_and_its_accuracy_line():
    """A card for data that is not the phantom said the model "has not seen a real patient"; the card's table
    had an accuracy column empty on every class row (outside audit)."""
    from usedge.export.model_card import card_markdown, limits

    assert not any("synthetic" in x for x in limits(["a", "b"], synthetic=False))
    assert any("synthetic" in x for x in limits(["a", "b"], synthetic=True))
    assert any("synthetic" in x for x in limits(["a", "b"]))                 # data unknown: kept
    cv = {"folds": 3, "source": "m.json", "rows": {
        "a": {"sensitivity": [0.5, 0.1], "roc_auc": [0.7, 0.1]}, "b": {"sensitivity": [0.6, 0.1], "roc_auc": [0.8, 0.1]},
        "balanced accuracy": {"accuracy": [0.55, 0.05]}, "overall accuracy": {"accuracy": [0.56, 0.04]}}}
    text = card_markdown({"training_data": {"note": "x"}, "cross_validation": cv, "checks": [], "intended_use": "x",
                          "limits": [], "uncertain_margin": 0.2}, "line")
    assert "| | roc_auc | sensitivity |" in text and "| a | 0.700 ± 0.100 | 0.500 ± 0.100 |" in text
    assert "Balanced accuracy 0.550 ± 0.050; overall accuracy 0.560 ± 0.040." in text
