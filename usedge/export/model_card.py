"""The model card `usedge export` writes: into every ONNX's metadata (ModelInfo.model_card) and as
MODEL_CARD.md beside the model (after Mitchell et al., "Model Cards for Model Reporting", 2019).

    training data   folder, sha256 over its images (sorted relative paths + file sha256), whether it
                    is usedge's synthetic phantom (a cohort.json from `usedge synth cohort` in it),
                    images and patients per class
    evaluation      the cross-validation table of the run (metrics.json beside the checkpoint's run)
    checks          every export check (FP32 parity, FP16, INT8 with the CPU it ran on) and its result
    use             intended use, limits, and the margin below which a result is called uncertain

`usedge.runtime.model_info.model_card_line` turns the card into the one line infer/serve/doctor show.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from usedge.export.report import ExportReport
from usedge.runtime.model_info import mean_sd

CARD_NAME = "MODEL_CARD.md"
def intended_use(class_names: list[str]) -> str:
    return ("research and teaching: a second look at B-mode ultrasound of superficial skin tumours "
            f"({', '.join(n.replace('_', ' ') for n in class_names)}) beside the scanner; not a medical device, "
            "not for diagnosis; a clinician decides")


def limits(class_names: list[str], synthetic: bool | None = None) -> list[str]:
    """The card's limits; the synthetic-phantom line when the data is synthetic or unknown (None)."""
    return ["trained only on the data named here; images from other scanners, presets, body sites or "
            "lesion types are outside what it has seen",
            f"{len(class_names)} classes only: every image is forced into one of them, including normal skin and "
            "other tumours",
            *(["a model trained on usedge's synthetic phantom has not seen a real patient"] if synthetic is not False else []),
            "the class activation map shows what the network weighted, not where the lesion is"]


def data_digest(samples, root: Path) -> str:
    """sha256 over the data set's images: sorted `relative path, label, sha256 of the file` lines."""
    from usedge.fileio import sha256_file

    def name(path: Path) -> str:      # under the root: relative (the digest survives moving the folder)
        path = Path(path)
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()

    lines = sorted(f"{name(s.path)}\t{s.label}\t{sha256_file(s.path)}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def describe_data(ds, fold: str | None = None, trained: list | None = None) -> dict:
    """Provenance of a usedge Dataset: digest, synthetic or not, images and patients per class.

    A fold model (`fold`, with the samples it `trained` on: its fold's training and validation
    patients) is described by those samples; the digest stays the data set's (which folder), and
    `data_set_images` gives its size."""
    cohort = Path(ds.root) / "cohort.json"
    generator = ""
    if cohort.is_file():
        try:
            generator = str(json.loads(cohort.read_text()).get("generator", ""))
        except (OSError, ValueError, AttributeError):
            generator = ""
    samples = ds.samples if trained is None else trained
    counts = {name: {"images": sum(s.label == k for s in samples),
                     "patients": len({s.patient_id for s in samples if s.label == k})}
              for k, name in enumerate(ds.class_names)}
    out = {"path": str(ds.root), "sha256": data_digest(ds.samples, Path(ds.root)), "synthetic": "synth" in generator,
           "generator": generator, "images": len(samples), "class_counts": counts,
           "patient_ids": bool(getattr(ds, "has_patient_ids", True))}
    if fold is not None and trained is not None:
        out |= {"fold": fold, "data_set_images": len(ds.samples)}
    return out


def same_run(carried: dict, agg: dict) -> bool:
    """Whether a metrics.json aggregate is the run whose CV summary a model.pt carries: same folds and every
    carried mean (accuracy alone is k/n on small test sets, so two runs often share it; the AUC rarely)."""
    if carried.get("folds") != agg.get("folds"):
        return False
    pairs = [("overall_accuracy_mean", agg.get("overall_accuracy")), ("balanced_accuracy_mean", agg.get("balanced_accuracy"))]
    pairs += [(f"macro_{m}_mean", (agg.get("macro") or {}).get(m)) for m in ("sensitivity", "specificity", "roc_auc")]
    for key, cell in pairs:
        if key not in carried:
            continue
        a, b = carried[key], (cell or {}).get("mean")
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        if not (math.isnan(a) and math.isnan(b)) and not abs(a - b) <= 1e-9:
            return False
    return True


def cv_table(checkpoint: Path, class_names: list[str], carried: dict | None = None) -> dict:
    """{"folds", "source", "rows": {row: {metric: [mean, sd]}}} from the run's metrics.json, or {}.

    `carried`: the CV summary the checkpoint itself carries (an all-data model.pt): a metrics.json whose
    folds or mean accuracy differ from it belongs to another run (a model copied between run folders)
    and is not shown ({"other_run": its path})."""
    for run in (checkpoint.parent, checkpoint.parent.parent):
        path = run / "metrics.json"
        if not path.is_file():
            continue
        try:
            agg = json.loads(path.read_text())["aggregate"]
            if carried and not same_run(carried, agg):
                return {"other_run": str(path)}
            pick = ("sensitivity", "specificity", "f1", "roc_auc")
            rows = {name: {m: [agg["per_class"][name][m]["mean"], agg["per_class"][name][m]["sd"]] for m in pick}
                    for name in class_names}
            rows["macro"] = {m: [agg["macro"][m]["mean"], agg["macro"][m]["sd"]] for m in pick}
            if "balanced_accuracy" in agg:      # the headline: class-balanced (older runs lack it)
                rows["balanced accuracy"] = {"accuracy": [agg["balanced_accuracy"]["mean"], agg["balanced_accuracy"]["sd"]]}
            rows["overall accuracy"] = {"accuracy": [agg["overall_accuracy"]["mean"], agg["overall_accuracy"]["sd"]]}
            table = {"folds": agg["folds"], "source": str(path), "rows": rows}
            from usedge.train.report import macro_coverage    # a macro mean over fewer classes says so

            partial = {m: macro_coverage(agg, m, len(class_names)).strip(" ()") for m in pick}
            if any(partial.values()):
                table["macro_coverage"] = {m: v for m, v in partial.items() if v}
            # a mean over fewer folds than the run's (a metric some folds leave undefined), and a balanced accuracy
            # over fewer classes than the model's (a fold without test images of a class): said beside the figure
            coverage: dict[str, dict[str, str]] = {}
            for name in class_names:
                for m in pick:
                    n = agg["per_class"][name][m].get("n")
                    if n is not None and n < agg["folds"]:
                        coverage.setdefault(name, {})[m] = f"{n} of {agg['folds']} folds"
            if "balanced_accuracy" in agg and (bal := macro_coverage(agg, "sensitivity", len(class_names)).strip(" ()")):
                coverage["balanced accuracy"] = {"accuracy": bal}
            if coverage:
                table["coverage"] = coverage
            if run == checkpoint.parent.parent and checkpoint.parent.name.startswith("fold"):   # a fold's model
                table["this_fold"] = own_fold(json.loads(path.read_text()), checkpoint.parent.name)
            return table
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {}


def own_fold(metrics: dict, name: str) -> dict:
    """A fold model's own test-fold figures from the run's metrics.json ({} when not there)."""
    for f in metrics.get("folds") or []:
        if f"fold{f.get('fold')}" == name:
            m = f.get("metrics") or {}
            return {"name": name, "test_images": m.get("n"), "balanced_accuracy": m.get("balanced_accuracy"),
                    "accuracy": m.get("overall_accuracy"),
                    "classes": len(metrics.get("class_names") or []) or None,
                    "balanced_classes": (m.get("macro_classes") or {}).get("sensitivity")}
    return {}


def build_card(checkpoint: Path, class_names: list[str], data: dict, report: ExportReport,
               uncertain_margin: float, carried_cv: dict | None = None) -> dict:
    """The card as a JSON-able dict (what goes into ModelInfo.model_card)."""
    checks = [{"check": c.name, "artifact": c.artifact, "passed": c.passed, "aim": c.aim, "note": c.note,
               "figures": {k: v for k, v in c.figures.items() if isinstance(v, (int, float, str))}}
              for c in report.checks]
    return {"training_data": data, "cross_validation": cv_table(checkpoint, class_names, carried_cv), "checks": checks,
            "intended_use": intended_use(class_names),
            "limits": limits(class_names, data.get("synthetic") if data.get("sha256") else None),
            "uncertain_margin": uncertain_margin,
            "checkpoint": checkpoint.name, "checkpoint_sha256": report.checkpoint_sha256,
            "usedge_version": report.usedge_version}


def card_markdown(card: dict, line: str) -> str:
    """MODEL_CARD.md."""
    d = card["training_data"]
    out = ["# Model card", "", f"**{line}**", "", "## Intended use", "", card["intended_use"], "",
           "## Training data", ""]
    if d.get("sha256"):
        kind = f"synthetic ({d['generator']})" if d["synthetic"] else "not usedge's synthetic phantom"
        if d.get("fold"):
            out += [f"- {d['fold']} of a cross-validation run: trained on {d['images']} of the folder's "
                    f"{d.get('data_set_images', '?')} images (its fold's training and validation patients; the "
                    "table counts them), never on its test patients",
                    f"- folder `{d['path']}` (named by {d.get('named_by', '?')}), {kind}"]
        else:
            out += [f"- folder `{d['path']}` (named by {d.get('named_by', '?')}), {d['images']} images, {kind}"]
        out += [f"- sha256 of the folder's images `{d['sha256']}`" + (" (the whole data set's)" if d.get("fold") else ""),
                "", "| class | images | patients |", "|---|---:|---:|"]
        ids = d.get("patient_ids", True)      # without patient IDs each image counted as a patient: not a count
        out += [f"| {name} | {c['images']} | {c['patients'] if ids else 'unknown'} |" for name, c in d["class_counts"].items()]
        if not ids:
            out.append("\nThe data set names no patients (no patient IDs): each image was counted as its own patient, "
                       "and the folds were made by image.")
    else:
        out.append(f"- unknown: {d.get('note', 'no data set given or recorded')}")
    if d.get("checks_data"):
        out.append(f"- the export checks ran on {d['checks_data']}")
    cv = card["cross_validation"]
    out += ["", "## Cross-validation", ""]
    if cv.get("other_run"):
        out.append(f"`{cv['other_run']}` beside the checkpoint is another run's (its folds or mean accuracy differ "
                   "from those the checkpoint carries): not shown.")
    elif cv:
        # the per-class metrics in a table; the accuracies (one figure each, no per-class cells) in a line
        table = {name: row for name, row in cv["rows"].items() if "accuracy" not in row}
        metrics = sorted({m for row in table.values() for m in row})
        out += [f"{cv['folds']} fold(s), mean ± SD (from `{cv['source']}`).", "",
                "| | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        cover = cv.get("macro_coverage") or {}
        partial = cv.get("coverage") or {}

        def cell(name: str, row: dict, m: str) -> str:
            text = mean_sd(row.get(m))
            if name == "macro" and text and m in cover:
                return f"{text} ({cover[m]})"
            return f"{text} ({partial[name][m]})" if text and m in partial.get(name, {}) else text
        out += [f"| {name} | " + " | ".join(cell(name, row, m) for m in metrics) + " |" for name, row in table.items()]
        accuracies = [f"{name} {cell(name, row, 'accuracy')}" for name, row in cv["rows"].items() if "accuracy" in row]
        if accuracies:
            out += ["", "; ".join(accuracies).capitalize() + "."]
        own = cv.get("this_fold") or {}
        if own:
            few = own.get("balanced_classes")
            over = (f" (over {few} of {own['classes']} classes: the fold has no test image of the others)"
                    if isinstance(few, int) and isinstance(own.get("classes"), int) and few < own["classes"] else "")
            fig = " and ".join(f"{k.replace('_', ' ')} {own[k]:.3f}" + (over if k == "balanced_accuracy" else "")
                               for k in ("balanced_accuracy", "accuracy") if isinstance(own.get(k), (int, float)))
            out += ["", f"This model is {own['name']}'s: on its own test fold ({own.get('test_images', '?')} images) "
                        f"{fig or 'no figures'}; the table above is the whole run's."]
    else:
        out.append("No metrics.json of the training run beside the checkpoint: not evaluated here.")
    out += ["", "## Export checks", "", "| check | file | result | aim | note |", "|---|---|---|---|---|"]
    out += [f"| {c['check']} | {c['artifact']} | {'ok' if c['passed'] else 'MISSED'} | {c['aim']} | {c['note']} |"
            for c in card["checks"]]
    out += ["", "## Uncertainty", "", f"A result whose top two probabilities differ by less than "
            f"{card['uncertain_margin']:g} is to be shown as uncertain, not as a diagnosis.", "", "## Limits", ""]
    out += [f"- {limit}" for limit in card["limits"]]
    return "\n".join(out) + "\n"
