"""Fast AutoAugment search by density matching (Lim et al. 2019), with optuna TPE.

For each scope (an outer fold's non-test part, and the whole data set for the final model):
    K inner splits by patient -> per split: a child model trained WITHOUT augmentation on the inner
    train part -> optuna TPE over sub-policies of `ops_per_sub_policy` (op, probability, magnitude)
    -> objective: the child's loss (or accuracy) on the held-out inner images augmented by the
    candidate (forward passes only; the un-augmented uint8 images are cached) -> top N per split.
The K x N sub-policies of a scope are merged into its policy (4 x 5 = 20 -> the paper's 21x).
Fold k's scope never holds fold k's test patients; policy.json records the seed, the fold count, the
preprocessing and a digest of each scope's patients so `usedge train` can refuse a policy that does
not fit its run (`usedge.train.augment.check_policy_for_run`).

Two presets (`PRESETS`): `usedge` (the default: cheap children — focal loss, 10 epochs at a constant
rate from random init, objective on augmented images only, all 21 ops) and `authors` (the authors'
code as far as offline allows: cross-entropy children, 30 epochs, StepLR(7, 0.1), ImageNet init when
a weights file is given, objective on augmented plus original images, their 14 ops).

Studies live in an optuna storage (sqlite file by default, any RDB URL to share one search between
machines): an interrupted search resumes where it stopped, and children are cached on disk.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from usedge.dataset import Dataset, check_no_shared_images
from usedge.errors import ConfigError, DataError
from usedge.fileio import sha256_file
from usedge.train.augment import OpSpec, Policy, SubPolicy, image_rng, patients_digest, resolve_ops
from usedge.train.config import DataConfig, ModelConfig, TrainConfig

OBJECTIVES = ("loss", "accuracy")
HELDOUT = ("augmented", "augmented+original")


@dataclass
class ChildConfig:
    """The child model trained without augmentation on each inner split (cheap on purpose)."""

    arch: str = "ag_resnet18"
    gate_norm: str = ModelConfig.gate_norm   # the same gate as `usedge train` trains
    image_size: int = 224      # pixels; smaller = cheaper search (the policy's ops are size-relative)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4           # Adam, as the paper's training
    step_size: int = 0         # StepLR step in epochs (factor step_gamma); 0 = constant rate
    step_gamma: float = 0.1
    pretrained: str = "none"   # none | imagenet (online) | PATH to a torchvision ResNet18 state_dict
    loss: str = "focal"        # focal | ce (focal with the paper's gamma 3, alpha [0.75, 0.75, 0.25])
    threads: int = 0           # torch CPU threads (0 = torch's default)
    device: str = "auto"


@dataclass
class SearchConfig:
    """The `usedge` preset: the authors' 4 inner splits x 100 trials x top 5 = 20 sub-policies, with
    cheaper children and every op (see PRESETS for what differs from the authors' code)."""

    preset: str = "usedge"
    inner_splits: int = 4
    trials: int = 100
    top: int = 5
    ops: str = "all"                # all | paper | ultrasound | Op1,Op2,...
    ops_per_sub_policy: int = 2
    objective: str = "loss"         # loss (authors, minimised) | accuracy (anchor, maximised)
    heldout: str = "augmented"      # what the objective scores: augmented | augmented+original (authors)
    folds: int = 0                  # outer folds to search per fold (same splits as usedge train); 0 = whole set only
    max_folds: int = 0              # search only the first N outer folds (0 = all)
    final_model: bool = True        # with folds: also search the whole set, for usedge train's final model
    seed: int = 0                   # the run's seed: outer splits, inner splits, children, sampler
    crop: str = DataConfig.crop     # the run's preprocessing (set from its config: `for_run`)
    remove_doppler: bool = DataConfig.remove_doppler
    resize: str = DataConfig.resize
    child: ChildConfig = field(default_factory=ChildConfig)

    @classmethod
    def for_run(cls, train: TrainConfig, preset: str = "usedge", **overrides) -> "SearchConfig":
        """The preset, searched for a training run: its seed, folds, final model, crop, Doppler removal,
        resize and gate; then `overrides` (field=value; child fields as child_<name>=value)."""
        cfg = from_preset(preset)
        cfg.seed, cfg.folds, cfg.final_model = train.run.seed, train.cv.folds, train.cv.final_model
        cfg.crop, cfg.remove_doppler, cfg.resize = train.data.crop, train.data.remove_doppler, train.data.resize
        cfg.child.gate_norm = train.model.gate_norm
        for key, value in overrides.items():
            if value is None:
                continue
            target, name = (cfg.child, key[len("child_"):]) if key.startswith("child_") else (cfg, key)
            if not hasattr(target, name):
                raise ConfigError(f"unknown search option '{key}'", hint="see usedge augment search --help")
            setattr(target, name, value)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "SearchConfig":
        resolve_ops(self.ops)
        checks = [
            (self.inner_splits >= 2, "inner splits must be at least 2"),
            (self.trials >= 1, "trials must be at least 1"),
            (1 <= self.top <= self.trials, "top must lie in [1, trials]"),
            (self.ops_per_sub_policy >= 1, "ops per sub-policy must be at least 1"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}"),
            (self.heldout in HELDOUT, f"heldout must be one of {', '.join(HELDOUT)}"),
            (self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}"),
            (self.child.step_size >= 0, "child step size must be >= 0 (0 = constant rate)"),
            (self.folds == 0 or self.folds >= 2, "folds must be 0 (whole set) or at least 2"),
            (self.child.epochs >= 1 and self.child.batch_size >= 1, "child epochs and batch size must be >= 1"),
            (self.child.image_size >= 16, "child image size must be at least 16 pixels"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message, hint="fix the search option")
        return self


# What each preset sets on top of the dataclass defaults. `authors` follows the authors' search code;
# offline, ImageNet initialisation needs a local weights file (child.pretrained = PATH).
PRESETS: dict[str, dict] = {
    "usedge": {},
    "authors": {"ops": "paper", "heldout": "augmented+original",
                "child": {"loss": "ce", "epochs": 30, "step_size": 7, "step_gamma": 0.1}},
}


def from_preset(name: str) -> SearchConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown search preset '{name}'", hint=f"use one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    child = ChildConfig(**values.pop("child", {}))
    return SearchConfig(preset=name, child=child, **values)


# --- data ---------------------------------------------------------------------------------------

def load_images(dataset: Dataset, indices, size: int, crop: str, remove_doppler: bool, resize: str,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """uint8 N x size x size images prepared as the run prepares them (its crop, Doppler removal and resize),
    via usedge.train.data.load_images: the children see the pixels training sees."""
    from usedge.runtime.preprocess import PreprocessSpec
    from usedge.train.data import load_images as prepare_all

    spec = PreprocessSpec(size=size, crop=crop, remove_doppler=remove_doppler, resize=resize)
    samples = [dataset.samples[int(i)] for i in indices]
    out = np.empty((len(samples), size, size), np.uint8)
    for start in range(0, len(samples), 32):
        chunk = samples[start:start + 32]
        out[start:start + len(chunk)] = prepare_all(chunk, spec, progress=False)
        if progress:
            progress(len(chunk))
    return out


def inner_splits(labels: np.ndarray, groups: np.ndarray, pool: np.ndarray, k: int, seed: int,
                 where=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train, held-out) index pairs of `pool`, by patient, class-stratified."""
    from usedge.train.cv import group_kfold

    parts = group_kfold(labels[pool], groups[pool], k, seed, "the augmentation search's inner splits", where,
                        fewer="lower --inner-splits")
    return [(pool[a], pool[b]) for a, b in parts]


def search_scopes(dataset: Dataset, cfg: SearchConfig) -> list[tuple[str, np.ndarray]]:
    """(name, image indices) the search runs on: 'k' = outer fold k's non-test part (the same outer
    splits `usedge train` makes for the seed), and 'all' = every image (folds = 0, or final_model)."""
    everything = [("all", np.arange(len(dataset)))]
    if cfg.folds == 0:
        return everything
    from usedge.train.cv import make_splits

    splits = make_splits(dataset, folds=cfg.folds, seed=cfg.seed)
    if cfg.max_folds:
        splits = splits[: cfg.max_folds]
    scopes = [(str(s.fold), np.sort(np.concatenate([s.train, s.val]))) for s in splits]
    return scopes + everything if cfg.final_model else scopes


def data_fingerprint(dataset: Dataset) -> str:
    """Short hash of the samples (file names, labels, patients) and of every image file's bytes: names
    studies so another data set never resumes this one's search, and lets `usedge train` refuse a policy
    searched on other data. Contents count: images re-cropped or anonymised in place under the same
    names are another data set."""
    h = hashlib.sha256()
    for s in dataset.samples:
        h.update(f"{s.path.name}|{s.label}|{s.patient_id}|".encode())
        try:
            h.update(sha256_file(s.path).encode())
        except OSError:
            h.update(b"unreadable")          # reported where the image is read
        h.update(b"\n")
    return h.hexdigest()[:12]


def split_keys(prefix: str, name: str, cfg: "SearchConfig", train_patients, heldout_patients, seed: int) -> tuple[str, str]:
    """(child cache name, optuna study name) of one inner split: they change with everything the child's
    weights (its training patients, seed and settings) and the trials' scores (the held-out patients, the
    objective and held-out mode) depend on, so a search re-run with another seed, fold count or setting
    never reuses a child trained, or trials scored, on other patients (a fold's test patients included)."""
    child = hashlib.sha256(f"{prefix}|{name}|{_child_key(cfg)}|{patients_digest(train_patients)}|{seed}"
                           .encode()).hexdigest()[:10]
    study = hashlib.sha256(f"{child}|{patients_digest(heldout_patients)}|{cfg.heldout}|{cfg.objective}"
                           .encode()).hexdigest()[:10]
    return f"{prefix}-{name}-{child}", f"{prefix}/{name}-{study}"


# --- the child model (torch, imported lazily) ----------------------------------------------------

def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _inputs(images: np.ndarray):
    import torch

    from usedge.runtime.preprocess import PreprocessSpec, normalise

    return torch.from_numpy(normalise(images, PreprocessSpec(size=images.shape[-1])))


def train_child(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: ChildConfig, seed: int,
                progress: Callable[[int], None] | None = None):
    """Train a child without augmentation (Adam, the configured loss). Returns the model in eval mode."""
    import torch

    from usedge.train.model import build_model

    from usedge.train.model import load_pretrained

    torch.manual_seed(seed)
    device = _device(cfg.device)
    model = build_model(cfg.arch, num_classes=num_classes, gate_norm=cfg.gate_norm)
    load_pretrained(model, cfg.pretrained)
    model = model.to(device)
    loss_fn = _loss(cfg, num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.step_size, cfg.step_gamma) if cfg.step_size else None
    x_all, y_all = _inputs(images), torch.as_tensor(labels, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two images
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_all[idx].to(device)), y_all[idx].to(device))
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        if progress:
            progress(1)
    return model.eval()


def _loss(cfg: ChildConfig, num_classes: int):
    from usedge.train.loss import build_loss

    alpha = [0.75, 0.75, 0.25] if num_classes == 3 else None
    return build_loss(cfg.loss, num_classes=num_classes, gamma=3.0, alpha=alpha)


def evaluate_child(model, images: np.ndarray, labels: np.ndarray, cfg: ChildConfig,
                   batch_size: int = 64) -> tuple[float, float]:
    """(mean loss, accuracy) of the child on uint8 images (forward passes only)."""
    import torch

    device = next(model.parameters()).device
    loss_fn = _loss(cfg, model.num_classes).to(device)
    y = torch.as_tensor(labels, dtype=torch.long)
    total, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            xb = _inputs(images[start:start + batch_size]).to(device)
            yb = y[start:start + batch_size].to(device)
            logits = model(xb)
            total += float(loss_fn(logits, yb)) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
    return total / len(images), correct / len(images)


def _child_key(cfg: SearchConfig) -> str:
    """Short hash of what a child's weights depend on, so a cache never serves another config's child."""
    what = {k: v for k, v in asdict(cfg.child).items() if k not in ("threads", "device")}
    what.update(crop=cfg.crop, remove_doppler=cfg.remove_doppler)
    if cfg.resize != "area":          # children cached before resize existed keep their key
        what.update(resize=cfg.resize)
    return hashlib.sha256(repr(sorted(what.items())).encode()).hexdigest()[:8]


def _child_path(cache: Path, name: str) -> Path:
    return cache / f"{name}.child.pt"


def get_child(cache: Path | None, name: str, images, labels, num_classes, cfg: ChildConfig, seed: int,
              progress=None):
    """Load the cached child of this split, or train and cache it (resumable searches skip training)."""
    import torch

    from usedge.fileio import write_bytes_atomic
    from usedge.train.model import build_model

    path = _child_path(cache, name) if cache else None
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = build_model(cfg.arch, num_classes=num_classes, gate_norm=cfg.gate_norm)
            model.load_state_dict(state)
            return model.to(_device(cfg.device)).eval(), True
        except Exception:  # a stale or broken cache entry: retrain
            pass
    model = train_child(images, labels, num_classes, cfg, seed, progress)
    if path is not None:
        import io

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
        write_bytes_atomic(path, buf.getvalue())
    return model, False


# --- optuna ------------------------------------------------------------------------------------

def sub_policy_from_params(params: dict, n_ops: int, score: float | None = None, source: str = "") -> SubPolicy:
    return SubPolicy(tuple(OpSpec(params[f"op{i}"], float(params[f"p{i}"]), float(params[f"m{i}"]))
                           for i in range(n_ops)), score=score, source=source)


def suggest_sub_policy(trial, ops: list[str], n_ops: int) -> SubPolicy:
    params = {}
    for i in range(n_ops):
        params[f"op{i}"] = trial.suggest_categorical(f"op{i}", ops)
        params[f"p{i}"] = trial.suggest_float(f"p{i}", 0.0, 1.0)
        params[f"m{i}"] = trial.suggest_float(f"m{i}", 0.0, 1.0)
    return sub_policy_from_params(params, n_ops)


def augment_set(images: np.ndarray, sub: SubPolicy, seed: int) -> np.ndarray:
    """Every image through the sub-policy, each with its own reproducible Generator."""
    return np.stack([sub(img, image_rng(seed, 0, i)) for i, img in enumerate(images)])


def default_storage(out: str | Path) -> str:
    return f"sqlite:///{Path(out).with_suffix('.optuna.db').resolve()}"


def _study(name: str, storage: str | None, cfg: SearchConfig, seed: int, ops: list[str]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "minimize" if cfg.objective == "loss" else "maximize"
    sampler = optuna.samplers.TPESampler(seed=seed)
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction=direction,
                                    load_if_exists=True)
    except Exception as exc:  # bad URL, unreachable database, locked file
        raise ConfigError(f"cannot open optuna storage ({type(exc).__name__})", path=_redact(storage),
                          hint="pass --storage sqlite:///search.db or a reachable RDB URL") from exc
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name} was run with another objective", path=storage,
                          hint="use a new --storage or the same --objective")
    space = {"ops": ops, "n_ops": cfg.ops_per_sub_policy}
    saved = study.user_attrs.get("space")
    if saved is None:
        study.set_user_attr("space", space)
    elif saved != space:
        raise ConfigError(f"study {name} searched another op set", path=storage,
                          hint="use a new --storage, or the same --ops / --ops-per-sub-policy")
    return study


def _completed(study) -> list:
    import optuna

    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]


def top_sub_policies(study, n: int, n_ops: int, source: str, objective: str) -> list[SubPolicy]:
    """The n best distinct completed trials as sub-policies (score = the objective value)."""
    trials = sorted(_completed(study), key=lambda t: t.value if objective == "loss" else -t.value)
    out, seen = [], set()
    for t in trials:
        sub = sub_policy_from_params(t.params, n_ops, score=t.value, source=source)
        key = tuple((s.op, round(s.probability, 4), round(s.magnitude, 4)) for s in sub.ops)
        if key in seen:
            continue
        seen.add(key)
        out.append(sub)
        if len(out) == n:
            break
    return out


@dataclass
class SplitResult:
    name: str
    n_train: int
    n_heldout: int
    child_loss: float         # on the un-augmented held-out images
    child_accuracy: float
    child_cached: bool
    trials: int
    seconds: float
    best: list[SubPolicy]


def search_split(name: str, keys: tuple[str, str], train_images, train_labels, held_images, held_labels,
                 num_classes: int, cfg: SearchConfig, storage: str | None, cache: Path | None, seed: int,
                 progress=None) -> SplitResult:
    """One inner split: the child (cached), then TPE trials until the study holds `cfg.trials` complete ones.
    keys: (child cache name, study name), from `split_keys`."""
    import optuna
    import torch

    if cfg.child.threads:
        torch.set_num_threads(cfg.child.threads)
    t0 = time.perf_counter()
    ops = resolve_ops(cfg.ops)
    child_name, study_name = keys
    child, cached = get_child(cache, child_name, train_images, train_labels, num_classes, cfg.child, seed)
    base_loss, base_acc = evaluate_child(child, held_images, held_labels, cfg.child)
    study = _study(study_name, storage, cfg, seed, ops)

    def objective(trial) -> float:
        sub = suggest_sub_policy(trial, ops, cfg.ops_per_sub_policy)
        loss, acc = evaluate_child(child, augment_set(held_images, sub, seed + trial.number), held_labels, cfg.child)
        if cfg.heldout == "augmented+original":  # the mean over the 2N images: originals and their copies
            loss, acc = (loss + base_loss) / 2, (acc + base_acc) / 2
        trial.set_user_attr("loss", loss)
        trial.set_user_attr("accuracy", acc)
        return loss if cfg.objective == "loss" else acc

    done = len(_completed(study))
    if progress:
        progress(min(done, cfg.trials))
    callbacks = [optuna.study.MaxTrialsCallback(cfg.trials, states=(optuna.trial.TrialState.COMPLETE,))]
    if progress:
        callbacks.append(lambda s, t: progress(1) if t.state == optuna.trial.TrialState.COMPLETE else None)
    if done < cfg.trials:
        study.optimize(objective, n_trials=cfg.trials - done, callbacks=callbacks, gc_after_trial=False)
    best = top_sub_policies(study, cfg.top, cfg.ops_per_sub_policy, study_name.rsplit("-", 1)[0], cfg.objective)
    return SplitResult(name, len(train_images), len(held_images), base_loss, base_acc, cached,
                       len(_completed(study)), time.perf_counter() - t0, best)


def search(dataset: Dataset, cfg: SearchConfig, storage: str | None = None, cache_dir: str | Path | None = None,
           study_name: str | None = None, show_progress: bool = True) -> Policy:
    """Run the whole search and return the policy: per-scope lists in meta['scopes'] ('0', '1', ... and
    'all'); its main list is the 'all' scope's, or with no all-data search every fold's (for previews
    only: `usedge train` gives each fold its own scope and refuses the main list).

    storage: optuna storage URL (None = in memory, not resumable). cache_dir: where child weights are
    kept between runs (None = not kept). study_name: prefix of the optuna study names.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cfg.validate()
    check_no_shared_images(dataset)
    if len(dataset.class_names) < 2:
        raise DataError("the search needs at least two classes", path=dataset.root, hint="add images of another class")
    labels = np.asarray(dataset.labels)
    groups = np.asarray(dataset.groups)
    scopes = search_scopes(dataset, cfg)
    # every scope's splits now: splits that cannot be made fail before the storage file is created
    splits = {scope: inner_splits(labels, groups, pool, cfg.inner_splits, cfg.seed + 17, dataset.root)
              for scope, pool in scopes}
    if storage:  # fail before any child is trained
        import optuna

        try:
            optuna.storages.get_storage(storage)
        except Exception as exc:
            raise ConfigError(f"cannot open optuna storage ({type(exc).__name__})", path=_redact(storage),
                              hint="pass --storage sqlite:///search.db or a reachable RDB URL") from exc
    t0 = time.perf_counter()
    fingerprint = data_fingerprint(dataset)
    prefix = study_name or f"usedge-augment-{fingerprint}"
    cache = Path(cache_dir) if cache_dir else None
    n_splits_total = len(scopes) * cfg.inner_splits

    results: dict[str, list[SplitResult]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not show_progress, transient=False) as bar:
        need = np.unique(np.concatenate([pool for _, pool in scopes]))
        task = bar.add_task(f"loading {len(need)} images at {cfg.child.image_size}px", total=len(need))
        cached = dict(zip(need.tolist(), load_images(dataset, need, cfg.child.image_size, cfg.crop,
                                                     cfg.remove_doppler, cfg.resize, lambda k: bar.advance(task, k))))
        overall = bar.add_task(f"inner splits ({len(scopes)} scope(s) x {cfg.inner_splits})", total=n_splits_total)
        for scope in splits:
            results[scope] = []
            for s, (tr, ho) in enumerate(splits[scope]):
                name = f"{'all' if scope == 'all' else 'fold' + scope}-split{s}"
                trial_task = bar.add_task(f"  {name}: child + {cfg.trials} trials", total=cfg.trials)
                keys = split_keys(prefix, name, cfg, set(groups[tr].tolist()), set(groups[ho].tolist()), cfg.seed + s)
                res = search_split(
                    name, keys,
                    np.stack([cached[int(i)] for i in tr]), labels[tr],
                    np.stack([cached[int(i)] for i in ho]), labels[ho],
                    len(dataset.class_names), cfg, storage, cache, cfg.seed + s,
                    progress=lambda k, t=trial_task: bar.advance(t, k))
                results[scope].append(res)
                bar.remove_task(trial_task)
                bar.advance(overall, 1)

    per_scope = {scope: [sp for r in rs for sp in r.best] for scope, rs in results.items()}
    main = per_scope["all"] if "all" in per_scope else [sp for subs in per_scope.values() for sp in subs]
    pools = {scope: sorted({str(groups[i]) for i in pool}) for scope, pool in scopes}
    meta = {
        "kind": "fast-autoaugment",
        "data": str(dataset.root.resolve()),
        "data_fingerprint": fingerprint,
        "class_names": dataset.class_names,
        "config": cfg.to_dict(),
        "search": {"preset": cfg.preset, "seed": cfg.seed, "folds": cfg.folds, "max_folds": cfg.max_folds,
                   "preprocess": {"crop": cfg.crop, "remove_doppler": cfg.remove_doppler, "resize": cfg.resize},
                   "digests": {scope: patients_digest(p) for scope, p in pools.items()}},
        "ops": resolve_ops(cfg.ops),
        "storage": _redact(storage),
        "study_prefix": prefix,
        "search_minutes": round((time.perf_counter() - t0) / 60.0, 2),
        "splits": [{"name": r.name, "n_train": r.n_train, "n_heldout": r.n_heldout,
                    "child_heldout_loss": round(r.child_loss, 5), "child_heldout_accuracy": round(r.child_accuracy, 4),
                    "child_from_cache": r.child_cached, "trials": r.trials, "seconds": round(r.seconds, 1)}
                   for rs in results.values() for r in rs],
    }
    meta["scopes"] = {scope: [sp.to_dict() for sp in subs] for scope, subs in per_scope.items()}
    meta["scope_patients"] = pools
    return Policy(main, meta=meta)


def _redact(url: str | None) -> str | None:
    """Storage URL without a password (it is written into policy.json)."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


