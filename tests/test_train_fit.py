"""Training loop: a tiny set is overfit to 100 %, resume equals an uninterrupted run, checkpoints load safely."""

from pathlib import Path

import numpy as np
import pytest
import torch

from usedge.dataset import Sample
from usedge.train.checkpoint import load_checkpoint, read_checkpoint
from usedge.train.config import load_config
from usedge.train.data import LightAugment, ShardedBatchSampler, TumorDataset, make_loader
from usedge.train.trainer import _make_model, build_scheduler, evaluate, fit, resolve_device, seed_everything

NAMES = ["epidermal_cyst", "lipoma", "pilomatricoma"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(n=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = (rng.random((n, size, size)) * 80).astype(np.uint8)
    images[labels == 0, 8:24, 8:24] = 220      # a bright square, a stripe pattern, plain noise
    images[labels == 1, ::4] = 200
    samples = [Sample(path=Path(f"img{i}.png"), label=int(y), patient_id=f"p{i}") for i, y in enumerate(labels)]
    return samples, images


def _cfg(**over):
    base = {"data.image_size": 32, "optim.batch_size": 4, "optim.lr": 1e-3, "run.device": "cpu"}
    return load_config(overrides={**base, **over})


def test_tiny_set_is_overfit_to_100_percent():
    cfg = _cfg(**{"optim.epochs": 15, "optim.batch_size": 6, "optim.schedule": "step", "optim.step_size": 100,
                  "data.augment": "none"})
    samples, images = _tiny()
    ds = TumorDataset(samples, cfg.preprocess_spec(), images=images)
    seed_everything(0)
    model = _make_model(cfg, 3, seed=0)
    res = fit(model, ds, ds, cfg, resolve_device("cpu"), class_names=NAMES)
    probs, labels = evaluate(model, make_loader(ds, 16, train=False), resolve_device("cpu"))
    assert (probs.argmax(1) == labels).mean() == 1.0
    assert res.history[-1]["train_accuracy"] == 1.0
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_resume_continues_exactly(tmp_path):
    samples, images = _tiny(n=9)
    spec = _cfg().preprocess_spec()
    train = TumorDataset(samples[:6], spec, images=images[:6])
    val = TumorDataset(samples[6:], spec, images=images[6:])
    dev = resolve_device("cpu")

    def run(epochs, out, resume):
        cfg = _cfg(**{"optim.epochs": epochs, "optim.schedule": "step", "optim.step_size": 2})
        seed_everything(0)
        model = _make_model(cfg, 3, seed=0)
        # with the default light augmentation: its draws depend on (seed, epoch) only
        return model, fit(model, LightAugmented(train), val, cfg, dev, class_names=NAMES, out_dir=out,
                          resume=resume)

    straight_model, straight = run(4, tmp_path / "straight", False)
    run(2, tmp_path / "resumed", False)                      # "interrupted" after 2 epochs
    resumed_model, resumed = run(4, tmp_path / "resumed", True)
    assert resumed.resumed_from == 2 and len(resumed.history) == 4
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in straight.history],
                                                                        rel=1e-5)
    for (k, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    last = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert last["extra"]["epoch"] == 4 and "optimizer" in last["extra"]


def LightAugmented(ds):
    return TumorDataset(ds.samples, ds.spec, transform=LightAugment(), images=ds.images)


def test_light_augment_is_seeded_and_keeps_shape():
    image = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    np.random.seed(3)
    a = [LightAugment()(image) for _ in range(4)]
    np.random.seed(3)
    b = [LightAugment()(image) for _ in range(4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == image.shape and x.dtype == np.uint8 for x in a)
    assert any(not np.array_equal(x, image) for x in a)


def test_warmup_cosine_schedule():
    cfg = _cfg(**{"optim.epochs": 6, "optim.lr": 1e-3})
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5e-3) and lrs[1] == pytest.approx(1e-3)     # one warm-up epoch
    assert lrs[1:] == sorted(lrs[1:], reverse=True) and lrs[-1] > 0


def test_sharded_sampler_reproduces_the_single_process_batches():
    one = list(ShardedBatchSampler(22, 8, seed=3))
    ranks = [list(ShardedBatchSampler(22, 8, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == one
    assert sorted(i for b in one for i in b) == list(range(22))   # last batch of 6 kept
    s = ShardedBatchSampler(9, 8, seed=3)                           # a final batch of 1 is dropped (BatchNorm)
    assert [len(b) for b in s] == [8]


def test_run_artifacts_of_tiny_cohort(tiny_train_run, tiny_checkpoint, tiny_cohort):
    import csv
    import json

    metrics = json.loads((tiny_train_run / "metrics.json").read_text())
    agg = metrics["aggregate"]
    assert agg["folds"] == 3 and set(agg["per_class"]) == set(NAMES)
    for m in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        assert {"mean", "sd", "pooled"} <= set(agg["macro"][m])
    assert sum(map(sum, metrics["pooled"]["confusion_matrix"])) == 24
    report = (tiny_train_run / "report.md").read_text()
    assert "paper" in report and "How averages are formed" in report and "pilomatricoma" in report
    for name in ("roc.png", "confusion.png", "curves.png", "folds.csv", "config.toml"):
        assert (tiny_train_run / name).stat().st_size > 0
    rows = list(csv.DictReader((tiny_train_run / "folds.csv").open()))
    assert len(rows) == 24 and {r["fold0"] for r in rows} <= {"train", "val", "test"}
    for k in range(3):
        assert (tiny_train_run / f"fold{k}" / "best.pt").is_file()
        preds = list(csv.DictReader((tiny_train_run / f"fold{k}" / "test_predictions.csv").open()))
        assert {r["path"] for r in preds} == {r["path"] for r in rows if r[f"fold{k}"] == "test"}
        # the report's AUCs recompute from this file (probabilities written with every digit, not 6 decimals)
        from sklearn.metrics import roc_auc_score

        for name in NAMES:
            truth = [r["label"] == name for r in preds]
            if 0 < sum(truth) < len(truth):
                got = roc_auc_score(truth, [float(r[f"p_{name}"]) for r in preds])
                assert got == metrics["folds"][k]["metrics"]["per_class"][name]["roc_auc"]
    model, meta = load_checkpoint(tiny_checkpoint)   # torch.load(weights_only=True) inside
    assert meta["class_names"] == NAMES and meta["preprocess"]["size"] == 64
    assert meta["config"]["optim"]["epochs"] == 3 and "cross_validation" in meta["metrics"]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3)
