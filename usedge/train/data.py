"""Training data: images read once, prepared with the ONE preprocessing definition, cached as uint8.

    images = load_images(samples, spec)              # N x S x S uint8, prepare_file() applied once
    ds = TumorDataset(samples, spec, transform=aug, images=images[idx])
    ds[i] -> (float32 1 x S x S tensor in [-1, 1], int label)

`transform` (optional) is any callable uint8 S x S -> uint8 S x S (an augmentation policy); it runs
between `prepare` and `normalise`, so training sees the same pixels as the bedside up to augmentation.
`LightAugment` is the default training transform (`data.augment = "light"`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from usedge.dataset import Sample
from usedge.errors import UsedgeError
from usedge.runtime.crop import CropInfo, prepare_file
from usedge.runtime.preprocess import PreprocessSpec, normalise

Transform = Callable[[np.ndarray], np.ndarray]


def load_images(samples: Sequence[Sample], spec: PreprocessSpec, progress: bool = True,
                return_info: bool = False) -> np.ndarray | tuple[np.ndarray, list[CropInfo]]:
    """Read and prepare every sample once (`prepare_file`: the bedside's crop, Doppler removal, resize).

    Returns N x size x size uint8 (what the model sees before normalise), and with return_info the
    CropInfo of each image (where the crop came from, e.g. to map lesion masks with `crop_mask`).
    """
    out = np.empty((len(samples), spec.size, spec.size), dtype=np.uint8)
    infos = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"reading {len(samples)} images", total=len(samples))
        for i, sample in enumerate(samples):
            try:
                out[i], info = prepare_file(Path(sample.path), spec)
            except UsedgeError as exc:
                if exc.path is None:      # a frame-level refusal (a blank image): name the image of the data set
                    exc = type(exc)(exc.message, path=sample.path, hint="remove it from the data set or replace it")
                raise exc from None
            infos.append(info)
            bar.advance(task)
    return (out, infos) if return_info else out


class LightAugment:
    """The default training augmentation: changes a sonographer or a scanner setting makes, kept small.

    Each with probability 0.5, in this order (operations of usedge.train.augment, magnitude drawn
    uniformly in [0, m_max]): left-right mirror; rotation up to 10 degrees (probe tilt); lateral shift
    up to 10 % and depth shift up to 5 % of the side; overall gain up to 3 dB; display dynamic range
    scaled by up to 1.5 ** 0.5 (contrast); TGC slope up to 6 dB over the depth. No up-down flip (depth
    has a direction), no noise or cutout. Randomness from numpy's global generator (seeded by the
    trainer and per loader worker), so a seed gives the same images.
    """

    P = 0.5
    OPS = (("flip_lr", 1.0), ("rotate", 1 / 3), ("translate_x", 1 / 3), ("translate_y", 1 / 6),
           ("gain", 0.5), ("dynamic_range", 0.5), ("tgc", 0.5))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from usedge.train import augment

        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1, size=4))
        for name, m_max in self.OPS:
            if rng.random() < self.P:
                image = getattr(augment, name)(image, float(rng.uniform(0.0, m_max)), rng)
        return image


class TumorDataset(TorchDataset):
    """Samples with cached prepared uint8 images; optional uint8 augmentation before normalisation."""

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, transform: Transform | None = None,
                 images: np.ndarray | None = None):
        self.samples = list(samples)
        self.spec = spec
        self.transform = transform
        self.images = images if images is not None else load_images(self.samples, spec, progress=False)
        if len(self.images) != len(self.samples):
            raise ValueError("images and samples differ in length")
        self.labels = np.asarray([s.label for s in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        x = normalise(np.ascontiguousarray(image), self.spec)[0]  # 1 x S x S float32
        return torch.from_numpy(x), int(self.labels[i])


class ShardedBatchSampler(Sampler[list[int]]):
    """Epoch-seeded shuffled batches of the GLOBAL batch size; each process takes its slice of each batch.

    With one process this is an ordinary shuffled batch sampler. Under DDP with W processes, process r
    gets items [r*b/W, (r+1)*b/W) of every global batch, so the union of what all processes see in a
    step is exactly the batch the single-process run sees for the same seed and epoch; gradient
    averaging then reproduces the single-process step (up to BatchNorm's per-process statistics).
    A final short batch is split as evenly as possible (processes may then hold unequal sizes); one
    too short to give every process two items is dropped (BatchNorm cannot train on one item).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _batches(self) -> list[list[int]]:
        order = self.global_order()
        out = []
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) < 2 * self.world_size:  # BatchNorm needs >= 2 items per process
                break
            bounds = np.linspace(0, len(batch), self.world_size + 1).round().astype(int)
            out.append(batch[bounds[self.rank]:bounds[self.rank + 1]])
        return out

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy/random seeded from torch's per-worker seed (for augmentation)."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: TumorDataset, batch_size: int, *, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Training loader: ShardedBatchSampler (shuffled, sharded); evaluation loader: in order, whole set."""
    if train:
        sampler = ShardedBatchSampler(len(dataset), batch_size, seed=seed, shuffle=True,
                                      rank=rank, world_size=world_size)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                           worker_init_fn=seed_worker, persistent_workers=num_workers > 0)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       worker_init_fn=seed_worker)
