"""Scale-out under `torchrun`: process group, and BatchNorm that sees the whole global batch.

With the ShardedBatchSampler (each process takes a slice of the same global batch) and synchronised
BatchNorm, a DDP step computes the same update as one process with the same global batch, up to
floating-point summation order. nn.SyncBatchNorm only runs on GPUs; `DistBatchNorm2d` does the same
over any backend (gloo on CPU) with a differentiable all_reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group if WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _synced() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all_reduce(SUM) over the default process group."""
    return _AllReduceSum.apply(x)


class DistBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over the items of all processes (any backend).

    Outside a process group, or in eval mode, it is an ordinary BatchNorm2d (same state_dict keys).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _synced()):
            return super().forward(x)
        c = x.shape[1]
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)), count]))   # differentiable sum over processes
        n = stats[c]
        mean = stats[:c] / n
        centred = x - mean[None, :, None, None]
        var = all_reduce_sum((centred * centred).sum(dim=(0, 2, 3))) / n      # two-pass: as exact as BatchNorm
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
            self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise every BatchNorm2d across processes: nn.SyncBatchNorm on CUDA, DistBatchNorm2d elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device, dtype=child.weight.dtype)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
