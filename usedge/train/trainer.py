"""Training loop as plain functions (torchvision-references style), plus cross-validation.

    train_one_epoch(model, loader, loss_fn, optimizer, device, ...) -> {"loss", "accuracy", "images", "seconds"}
    evaluate(model, loader, device, ...)                           -> (probs N x C float32, labels N int)
    fit(model, train_set, val_set, cfg, device, out_dir=...)       -> FitResult (best epoch on inner val)
    run_fold(run, split, bar)                                      -> one outer fold's test result
    train_final(run, split, summary, bar)                          -> model.pt, trained on all data
    cross_validate(dataset, cfg, out_dir)                          -> summary dict (also written to disk)

Runs on CUDA (AMP, channels_last) when present, CPU otherwise. Under `torchrun` every process runs
the same code; gradients are averaged with DDP (gloo on CPU, NCCL on CUDA) and only rank 0 writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from usedge.dataset import Dataset, check_no_shared_images
from usedge.errors import ConfigError, DataError, ModelError
from usedge.fileio import write_json_atomic, write_text_atomic
from usedge.train.checkpoint import read_checkpoint, save_checkpoint
from usedge.train.config import TrainConfig, dump_toml
from usedge.train.cv import (FoldSplit, few_patient_notes, final_split, inner_validation_notes, make_splits,
                             write_folds_csv)
from usedge.train.data import LightAugment, TumorDataset, load_images, make_loader
from usedge.train.distributed import Dist, convert_batchnorm, init_distributed
from usedge.train.loss import build_loss, describe_alpha, resolve_alpha
from usedge.train.metrics import classification_metrics, headline, roc_curves
from usedge.train.model import build_model, load_pretrained

# A function that turns the (un-augmented) training set into what is trained on: the augment
# engineer's policies plug in here (random sub-policy per image, or a 21x expanded set).
TrainAugmenter = Callable[[TumorDataset], torch.utils.data.Dataset]


# ---------------------------------------------------------------- devices, seeds
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for but no CUDA GPU is visible", hint="use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from exc


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


# ---------------------------------------------------------------- one epoch, evaluation
def _to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scaler: torch.amp.GradScaler | None = None, amp: bool = False,
                    channels_last: bool = False, progress=None, task=None, dist: Dist | None = None) -> dict:
    """One pass over `loader`. Returns mean loss and accuracy over all processes' images, images seen, seconds.

    `progress`/`task`: an optional rich Progress and task id, advanced per batch with loss/accuracy.
    """
    model.train()
    start = time.perf_counter()
    total = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
    for x, y in loader:
        x, y = _to_input(x, device, channels_last), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)],
                              dtype=torch.float64)
        if progress is not None:
            progress.update(task, advance=1, loss=total[0].item() / total[2].item(),
                            acc=total[1].item() / total[2].item())
    if dist is not None and dist.enabled:
        torch.distributed.all_reduce(total)
    n = max(total[2].item(), 1.0)
    return {"loss": total[0].item() / n, "accuracy": total[1].item() / n, "images": int(total[2].item()),
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, amp: bool = False,
             channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N x C float32) and labels (N,) for every item of `loader`, in order."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(_to_input(x, device, channels_last))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(y)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def probs_loss(loss_fn: nn.Module, probs: np.ndarray, labels: np.ndarray) -> float:
    """The training loss evaluated on predicted probabilities (log p are valid logits for softmax)."""
    logp = torch.log(torch.from_numpy(probs).double().clamp_min(1e-12)).float()
    return float(loss_fn.cpu()(logp, torch.from_numpy(labels).long()).item())


# ---------------------------------------------------------------- one model, inner-validation selection
@dataclass
class FitResult:
    best_epoch: int
    best_val: dict                     # {"loss", "accuracy"} on the inner validation set at best_epoch
    history: list[dict] = field(default_factory=list)  # per epoch: train loss/acc, val loss/acc, seconds
    resumed_from: int = 0              # epochs already done when resumed
    alpha: list[float] = field(default_factory=list)   # focal weight per class that was trained with


def _better(candidate: dict, best: dict | None, select_on: str) -> bool:
    if best is None:
        return True
    if select_on == "accuracy":
        return (candidate["accuracy"], -candidate["loss"]) > (best["accuracy"], -best["loss"])
    return candidate["loss"] < best["loss"]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch. cosine: linear warm-up over warmup_epochs (lr * (e+1)/(w+1)), then
    half a cosine from lr to ~0 at the end of the last epoch; step: StepLR(step_size, step_gamma)."""
    if cfg.optim.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.optim.step_size, gamma=cfg.optim.step_gamma)
    warmup, total = cfg.optim.warmup_epochs, cfg.optim.epochs

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def dataset_labels(ds: torch.utils.data.Dataset) -> np.ndarray:
    """Labels of a TumorDataset, or of a ConcatDataset of them (an expanded training set)."""
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels)
    return np.concatenate([dataset_labels(d) for d in ds.datasets])


def fit(model: nn.Module, train_set: torch.utils.data.Dataset, val_set: TumorDataset, cfg: TrainConfig,
        device: torch.device, *, class_names: list[str], out_dir: str | Path | None = None,
        dist: Dist | None = None, resume: bool = False, seed: int | None = None, progress=None,
        label: str = "fit", extra: dict | None = None, alpha: list[float] | None = None) -> FitResult:
    """Train `model` for cfg.optim.epochs; keep the weights of the best inner-validation epoch.

    `alpha`: focal weight per class; None resolves cfg.loss.alpha on train_set's labels. Writes
    `out_dir/last.pt` (weights + optimizer/scheduler state, every epoch) and `out_dir/best.pt` (rank 0
    only). With resume=True and an existing last.pt, continues from its epoch. On return the model
    holds the best epoch's weights.
    """
    dist = dist or Dist()
    seed = cfg.run.seed if seed is None else seed
    out_dir = Path(out_dir) if out_dir is not None else None
    use_cuda = device.type == "cuda"
    amp = cfg.run.amp and use_cuda
    channels_last = cfg.run.channels_last and use_cuda
    if alpha is None:
        alpha = resolve_alpha(cfg.loss.alpha, class_names, dataset_labels(train_set))
    model_without_ddp = model.to(device)
    if channels_last:
        model_without_ddp.to(memory_format=torch.channels_last)
    if dist.enabled and cfg.run.sync_bn:
        convert_batchnorm(model_without_ddp, device)
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(model_without_ddp, device_ids=[device.index] if use_cuda else None)
    loss_fn = build_loss(cfg.loss.name, len(class_names), cfg.loss.gamma, alpha).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = build_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    spec = cfg.preprocess_spec()
    train_loader = make_loader(train_set, cfg.optim.batch_size, train=True, seed=seed, rank=dist.rank,
                               world_size=dist.world_size, num_workers=cfg.data.num_workers)
    val_loader = make_loader(val_set, max(cfg.optim.batch_size, 32), train=False, num_workers=cfg.data.num_workers)

    history: list[dict] = []
    best: dict | None = None
    best_state = None
    start_epoch = 0
    last_path = out_dir / "last.pt" if out_dir else None
    if resume and last_path is not None and last_path.is_file():
        state = read_checkpoint(last_path)
        model_without_ddp.load_state_dict(state["state_dict"])
        ex = state["extra"]
        optimizer.load_state_dict(ex["optimizer"])
        scheduler.load_state_dict(ex["scheduler"])
        if scaler is not None and ex.get("scaler"):
            scaler.load_state_dict(ex["scaler"])
        history, best, start_epoch = list(ex["history"]), ex["best"], int(ex["epoch"])
        best_path = out_dir / "best.pt"
        best_state = read_checkpoint(best_path)["state_dict"] if best_path.is_file() else None
    resumed_from = start_epoch

    task = None
    if progress is not None:
        task = progress.add_task(label, total=(cfg.optim.epochs - start_epoch) * len(train_loader), loss=float("nan"),
                                 acc=float("nan"))
    meta = dict(class_names=class_names, preprocess=spec, config=cfg.to_dict())
    for epoch in range(start_epoch, cfg.optim.epochs):
        train_loader.batch_sampler.set_epoch(epoch)
        seed_everything(seed * 1000003 + epoch)   # augmentation draws depend on (seed, epoch): resume is exact
        if progress is not None:
            progress.update(task, description=f"{label} epoch {epoch + 1}/{cfg.optim.epochs}")
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, train_loader, loss_fn, optimizer, device, scaler=scaler, amp=amp,
                                channels_last=channels_last, progress=progress, task=task, dist=dist)
        scheduler.step()
        if dist.enabled:  # BatchNorm running stats are per process: use rank 0's everywhere (same selection)
            for buf in model_without_ddp.buffers():
                torch.distributed.broadcast(buf, 0)
        probs, labels = evaluate(model_without_ddp, val_loader, device, amp=amp, channels_last=channels_last)
        val = {"loss": probs_loss(loss_fn, probs, labels),
               "accuracy": float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0}
        loss_fn.to(device)
        history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "seconds": stats["seconds"],
                        "images_per_second": stats["images"] / max(stats["seconds"], 1e-9), "lr": lr})
        improved = _better(val, best, cfg.cv.select_on)
        if improved:
            best = {**val, "epoch": epoch + 1}
            best_state = {k: v.detach().cpu().clone() for k, v in model_without_ddp.state_dict().items()}
        if out_dir is not None and dist.main:
            if improved:
                save_checkpoint(out_dir / "best.pt", model_without_ddp, metrics={"inner_val": best}, extra=extra,
                                **meta)
            save_checkpoint(last_path, model_without_ddp, metrics={"inner_val": best}, **meta, extra={
                "epoch": epoch + 1, "history": history, "best": best, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {}})
        dist.barrier()
    if best_state is not None:
        model_without_ddp.load_state_dict(best_state)
    if best is None:
        raise ModelError("training finished without an evaluated epoch", path=out_dir,
                         hint="the run was already complete; delete last.pt to train again")
    return FitResult(best_epoch=int(best["epoch"]), best_val={"loss": best["loss"], "accuracy": best["accuracy"]},
                     history=history, resumed_from=resumed_from, alpha=[float(a) for a in alpha])


# ---------------------------------------------------------------- cross-validation
def config_hash(cfg: TrainConfig) -> str:
    """Hash of everything that changes results (not device/threads/workers), to refuse a mismatched resume."""
    d = cfg.to_dict()
    for k in ("device", "threads"):
        d["run"].pop(k)
    d["data"].pop("num_workers")
    d["cv"].pop("max_folds")
    if d["data"]["resize"] == "area":       # what runs hashed before data.resize existed did
        d["data"].pop("resize")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def data_hash(dataset: Dataset) -> str:
    """Hash of what the data set is (each image's path under its root, class and patient; the class
    names), to refuse resuming a run on other data: its folds, checkpoints and metrics would mix both."""
    root = Path(os.path.abspath(dataset.root))       # the same rows whether the folder was named relative or absolute

    def name(path: Path) -> Path:
        path = Path(os.path.abspath(path))
        return path.relative_to(root) if path.is_relative_to(root) else path

    rows = sorted(f"{name(s.path)}\t{dataset.class_names[s.label]}\t{s.patient_id}" for s in dataset.samples)
    return hashlib.sha256("\n".join(dataset.class_names + rows).encode()).hexdigest()[:16]


def colour_note(samples, infos) -> str:
    """A note when images are mostly colour and were filled as Doppler: a tinted B-mode map (a chroma or
    sepia display) would train as a smooth fill, not as the scan; "" when none is."""
    from usedge.runtime.doppler import MOSTLY_COLOUR

    colour = [s.path for s, info in zip(samples, infos) if info.doppler_fraction > MOSTLY_COLOUR]
    if not colour:
        return ""
    return (f"{len(colour)} image(s) are more than {MOSTLY_COLOUR:.0%} colour, filled as colour Doppler "
            f"(e.g. {colour[0]}): if they are tinted B-mode, train with --set data.remove_doppler=false")


def frames_note(samples, infos) -> str:
    """A note when files of several frames (DICOM cines, multi-page TIFFs) are in the data set: training reads
    the first frame of each; "" when none is."""
    several = [(s.path, n) for s, info in zip(samples, infos) for n in info.notes if n.startswith("frame 1 of ")]
    if not several:
        return ""
    return (f"{len(several)} file(s) hold several frames (e.g. {several[0][0]}: {several[0][1]}): training reads the "
            "first frame of each; export the frames you want as images to train on them")


def check_no_repeated_inputs(dataset, images: np.ndarray) -> None:
    """DataError when two images of two patients give the same model input: one scan stored twice in other files
    (a PNG saved again as BMP or lossless TIFF: other bytes, the same pixels), which could land in a training and
    a test fold, or under two classes. The byte check (dataset.check_no_shared_images) runs before reading."""
    import hashlib

    seen: dict[bytes, int] = {}
    for i, sample in enumerate(dataset.samples):
        j = seen.setdefault(hashlib.blake2b(images[i].tobytes(), digest_size=16).digest(), i)
        other = dataset.samples[j]
        if j != i and (other.patient_id != sample.patient_id or other.label != sample.label):
            names = dataset.class_names
            where = (f"under two classes ({names[other.label]}, {names[sample.label]})" if other.label != sample.label
                     else f"under two patients ({other.patient_id}, {sample.patient_id})")
            raise DataError(f"{other.path} and {sample.path} give the same model input: one scan stored twice {where}",
                            path=dataset.root, hint="keep one copy (in its right class and patient)")


def _make_model(cfg: TrainConfig, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg.model.arch, num_classes=num_classes, gate_norm=cfg.model.gate_norm)
    load_pretrained(model, cfg.model.pretrained, conv1=cfg.model.conv1_init)
    return model


def default_augmenter(cfg: TrainConfig, dataset=None) -> TrainAugmenter | None:
    """The training-set transform the config asks for: light (default), none, or a Fast AutoAugment policy
    (checked against the run's dataset and config, so that no fold uses sub-policies searched on its test patients)."""
    if cfg.data.augment == "none":
        return None
    if cfg.data.augment == "light":
        return lambda ds: TumorDataset(ds.samples, ds.spec, transform=LightAugment(), images=ds.images)
    from usedge.train.augment import make_train_augmenter

    return make_train_augmenter(cfg.data.policy, cfg.data.augment, run=None if dataset is None else (dataset, cfg))


def _write_predictions(path: Path, dataset: Dataset, idx: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")      # quoted where needed: paths and patient ids may hold commas
    w.writerow(["path", "patient_id", "label", "predicted", *[f"p_{n}" for n in dataset.class_names]])
    for i, p, y in zip(idx, probs, labels):
        s = dataset.samples[int(i)]
        try:
            rel = s.path.relative_to(dataset.root)
        except ValueError:
            rel = s.path
        w.writerow([rel, s.patient_id, dataset.class_names[int(y)], dataset.class_names[int(p.argmax())],
                    *[repr(float(v)) for v in p]])     # every digit: the report's AUCs recompute from this file
    write_text_atomic(path, buf.getvalue())


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f}"), TimeElapsedColumn(),
                    disable=not enabled, transient=False)


@dataclass
class Run:
    """What every model of one cross-validation run shares."""

    dataset: Dataset
    cfg: TrainConfig
    out_dir: Path
    images: np.ndarray                 # N x S x S uint8, prepared once
    device: torch.device
    dist: Dist
    augmenter: TrainAugmenter | None
    resume: bool
    say: Callable[[str], None]

    def subset(self, idx: np.ndarray) -> TumorDataset:
        return TumorDataset([self.dataset.samples[i] for i in idx], self.cfg.preprocess_spec(), images=self.images[idx])

    def save(self, path: Path, model: nn.Module, metrics: dict, extra: dict) -> None:
        save_checkpoint(path, model, class_names=self.dataset.class_names, preprocess=self.cfg.preprocess_spec(),
                        config=self.cfg.to_dict(), metrics=metrics, extra=extra)


def train_model(run: Run, split: FoldSplit, seed: int, out_dir: Path, bar, label: str,
                extra: dict | None = None) -> tuple[nn.Module, FitResult]:
    """A fresh model (seeded) trained on split.train, checkpoint chosen on split.val."""
    names = run.dataset.class_names
    seed_everything(seed)
    model = _make_model(run.cfg, len(names), seed)
    train_set = run.subset(split.train)
    alpha = resolve_alpha(run.cfg.loss.alpha, names, train_set.labels)
    if run.cfg.loss.name == "focal":
        run.say(f"{label}: focal alpha ({run.cfg.loss.alpha}) {describe_alpha(alpha, names)}")
    if run.augmenter is not None:
        train_set = run.augmenter(train_set)
    fit_res = fit(model, train_set, run.subset(split.val), run.cfg, run.device, class_names=names, out_dir=out_dir,
                  dist=run.dist, resume=run.resume, seed=seed, progress=bar, label=label, extra=extra, alpha=alpha)
    if fit_res.resumed_from:
        run.say(f"{label}: resumed after epoch {fit_res.resumed_from} of {run.cfg.optim.epochs} (from {out_dir / 'last.pt'})")
    return model, fit_res


def run_fold(run: Run, split: FoldSplit, bar=None) -> dict:
    """Train outer fold `split.fold`, test it once on its test part, write fold{k}/; returns its result."""
    names = run.dataset.class_names
    fold_dir = run.out_dir / f"fold{split.fold}"
    result_path = fold_dir / "result.json"
    if run.resume and result_path.is_file():
        run.say(f"fold {split.fold}: already done, kept")
        return json.loads(result_path.read_text())
    model, fit_res = train_model(run, split, run.cfg.run.seed + 100 * split.fold, fold_dir, bar,
                                 f"fold {split.fold}", extra={"fold": split.fold})
    probs, labels = evaluate(model, make_loader(run.subset(split.test), 64, train=False), run.device)
    metrics = classification_metrics(labels, probs, names)
    result = {"fold": split.fold, "test_index": split.test.tolist(), "probs": probs.tolist(),
              "labels": labels.tolist(), "metrics": metrics, "best_epoch": fit_res.best_epoch,
              "inner_val": fit_res.best_val, "history": fit_res.history,
              "alpha": dict(zip(names, fit_res.alpha)) if run.cfg.loss.name == "focal" else None,
              "roc": roc_curves(labels, probs, names),
              "sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}}
    if run.dist.main:
        _write_predictions(fold_dir / "test_predictions.csv", run.dataset, split.test, probs, labels)
        run.save(fold_dir / "best.pt", model, {"inner_val": fit_res.best_val, "test": metrics},
                 {"fold": split.fold, "best_epoch": fit_res.best_epoch})
        write_json_atomic(result_path, result)
    run.dist.barrier()
    chosen = (f"inner val accuracy {fit_res.best_val['accuracy']:.3f}, loss {fit_res.best_val['loss']:.4f}"
              if run.cfg.cv.select_on == "accuracy" else f"inner val loss {fit_res.best_val['loss']:.4f}")
    run.say(f"fold {split.fold}: best epoch {fit_res.best_epoch} ({chosen}); "
            f"test {headline(metrics)}")
    return result


def train_final(run: Run, split: FoldSplit, summary: dict | None, bar=None) -> None:
    """The deployable model.pt: all data, checkpoint chosen on an inner validation split by patient."""
    model, fit_res = train_model(run, split, run.cfg.run.seed + 100 * run.cfg.cv.folds, run.out_dir / "final", bar,
                                 "all data")
    if run.dist.main:
        run.save(run.out_dir / "model.pt", model,
                 {"inner_val": fit_res.best_val, "cross_validation": _training_summary(summary) if summary else {}},
                 {"best_epoch": fit_res.best_epoch, "data": str(run.dataset.root.resolve()), "images": len(run.dataset)})
        run.say(f"all-data model: best epoch {fit_res.best_epoch}; written to {run.out_dir / 'model.pt'}")
    run.dist.barrier()


def _start_run(out_dir: Path, cfg: TrainConfig, dataset: Dataset, dist: Dist, device: torch.device,
               resume: bool) -> None:
    """Refuse a used folder (unless resuming the same config); stamp run.json and config.toml."""
    chash, dhash = config_hash(cfg), data_hash(dataset)
    stamp = out_dir / "run.json"
    # a run that never finished an epoch (it failed on its first image, or was stopped at once) holds nothing
    # to keep or resume: started afresh, so the corrected command works in the same --out
    trained = any(out_dir.glob("fold*/last.pt")) or (out_dir / "model.pt").exists()
    if stamp.is_file() and trained:
        previous = json.loads(stamp.read_text())
        if not resume:
            raise ConfigError("output folder already holds a run", path=out_dir,
                              hint="pass --resume to continue it, or choose another --out")
        if previous.get("config_hash") != chash:
            raise ConfigError("cannot resume: the config differs from the interrupted run's", path=out_dir,
                              hint=f"use the run's own config ({out_dir / 'config.toml'}; one without data.resize "
                                   "also needs --set data.resize=area) or another --out")
        if previous.get("data_hash", dhash) != dhash:      # runs stamped before the field: not checked
            raise ConfigError(f"cannot resume: the data set differs from the run's in its images' paths, classes or "
                              f"patients ({previous.get('images')} images in {previous.get('data')}; now "
                              f"{len(dataset)} in {dataset.root.resolve()})",
                              path=out_dir, hint="resume with the run's own data set, or train into another --out")
    dist.barrier()  # every process has checked the folder before rank 0 stamps it
    if dist.main:
        write_json_atomic(stamp, {"config_hash": chash, "data_hash": dhash, "data": str(dataset.root.resolve()),
                                  "images": len(dataset),
                                  "world_size": dist.world_size, "device": str(device)})
        write_text_atomic(out_dir / "config.toml", dump_toml(cfg))
    dist.barrier()


def cross_validate(dataset: Dataset, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
                   augmenter: TrainAugmenter | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = None, images: np.ndarray | None = None) -> dict:
    """Patient-grouped K-fold CV with inner-validation checkpoint selection; writes the whole run.

    out_dir gets: config.toml, folds.csv, fold{k}/{best,last}.pt, fold{k}/test_predictions.csv,
    fold{k}/result.json, metrics.json, report.md, *.png, and model.pt (all data, if cfg.cv.final_model).
    `augmenter`: replaces the config's training transform (`default_augmenter(cfg)`).
    `images`: optional N x S x S uint8 already prepared for dataset.samples with cfg's preprocessing
    (`load_images`), to share one read between runs. Returns the summary written to metrics.json.
    """
    from usedge.train.report import write_report

    out_dir = Path(out_dir)
    device = resolve_device(cfg.run.device)
    dist = init_distributed(device)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    say = (log or print) if dist.main else (lambda _m: None)
    check_no_shared_images(dataset)            # before anything is written: a copy under two patients leaks
    resolve_alpha(cfg.loss.alpha, dataset.class_names, dataset.labels)   # a class name typed wrong, before the
    # folder is stamped (a stamped folder refused the corrected command without --resume, and --resume for its config)
    # the splits too, before the folder is stamped: too many folds, or too small an inner split, is refused
    # while --out can still take the corrected command
    splits = make_splits(dataset, cfg.cv.folds, cfg.cv.inner_val_fraction, cfg.run.seed)
    final = final_split(dataset, cfg.cv.inner_val_fraction, cfg.run.seed) if cfg.cv.final_model else None
    augmenter = augmenter or default_augmenter(cfg, dataset)    # a policy searched for another run: refused here
    _start_run(out_dir, cfg, dataset, dist, device, resume)
    if dist.main:
        write_folds_csv(out_dir / "folds.csv", dataset, splits, final)
    unit = "patient" if dataset.has_patient_ids else "image (no patient IDs)"
    say(f"{len(dataset)} images, " + (f"{len(set(dataset.groups))} patients, " if dataset.has_patient_ids else "")
        + f"{cfg.cv.folds} folds by {unit}; "
        f"device {device}, {dist.world_size} process(es); augmentation {cfg.data.augment}, "
        f"{cfg.optim.schedule} schedule")
    say("classes: " + "; ".join(f"{name} {n} images" + (f" / {p} patients" if dataset.has_patient_ids else "")
                                for name, n, p in dataset.class_counts()))
    for note in dataset.notes + few_patient_notes(dataset, cfg.cv.folds) + inner_validation_notes(dataset, splits):
        say(f"note: {note}")
    spec = cfg.preprocess_spec()
    t0 = time.perf_counter()
    if images is None:
        images, infos = load_images(dataset.samples, spec, progress=progress and dist.main, return_info=True)
        check_no_repeated_inputs(dataset, images)
        for note in (colour_note(dataset.samples, infos), frames_note(dataset.samples, infos)):
            if note:
                say(f"note: {note}")
    elif images.shape != (len(dataset), spec.size, spec.size):
        raise ValueError(f"images of shape {images.shape} do not fit {len(dataset)} samples at {spec.size} px")
    read_seconds = time.perf_counter() - t0
    run = Run(dataset, cfg, out_dir, images, device, dist, augmenter, resume, say)

    with _progress(progress and dist.main) as bar:
        fold_results = [run_fold(run, split, bar) for split in splits[:cfg.cv.max_folds or None]]
        summary = None
        if dist.main:
            summary = write_report(out_dir, dataset.class_names, fold_results, cfg,
                                   extra={"images": len(dataset), "patients": len(set(dataset.groups)),
                                          "patient_ids": dataset.has_patient_ids,
                                          "world_size": dist.world_size, "device": str(device),
                                          "read_seconds": read_seconds})
        if final is not None:
            train_final(run, final, summary, bar)
    return summary or {}


def _training_summary(summary: dict) -> dict:
    """The few CV numbers worth carrying inside model.pt (and from there into ONNX metadata)."""
    agg = summary["aggregate"]
    return {"folds": agg["folds"], "overall_accuracy_mean": agg["overall_accuracy"]["mean"],
            "balanced_accuracy_mean": agg["balanced_accuracy"]["mean"],
            "macro_sensitivity_mean": agg["macro"]["sensitivity"]["mean"],
            "macro_specificity_mean": agg["macro"]["specificity"]["mean"],
            "macro_roc_auc_mean": agg["macro"]["roc_auc"]["mean"]}
