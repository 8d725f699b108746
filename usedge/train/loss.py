"""Losses: multi-class focal loss (the paper's) and cross-entropy; focal alpha resolved by class name."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from usedge.errors import ConfigError
from usedge.train.config import parse_alpha


class FocalLoss(nn.Module):
    """Mean over the batch of -alpha[t] * (1 - p_t)^gamma * log p_t, p = softmax(logits).

    alpha is a registered buffer, so it moves with the module and is applied on every device
    (the authors' version silently dropped alpha on the CPU).
    """

    def __init__(self, gamma: float = 3.0, alpha: list[float] | torch.Tensor | None = None):
        super().__init__()
        self.gamma = float(gamma)
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32) if alpha is not None and len(alpha) else None
        self.register_buffer("alpha", alpha_t)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)
        pt = log_pt.exp()
        loss = -((1.0 - pt).clamp(min=0.0) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * self.alpha.to(loss.device)[target]
        return loss.mean()


def build_loss(name: str = "focal", num_classes: int = 3, gamma: float = 3.0,
               alpha: list[float] | None = None) -> nn.Module:
    """focal | ce. alpha: one weight per class in class order (`resolve_alpha`), or empty/None for none."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name != "focal":
        raise ConfigError(f"unknown loss '{name}'", hint="use focal or ce")
    if alpha and len(alpha) != num_classes:
        raise ConfigError(f"loss.alpha has {len(alpha)} values for {num_classes} classes",
                          hint="give loss.alpha by class name (resolve_alpha), or balanced | sqrt | uniform")
    return FocalLoss(gamma=gamma, alpha=alpha or None)


def resolve_alpha(spec: str, class_names: list[str], train_labels) -> list[float]:
    """One focal weight per class (class_names order) from loss.alpha.

    balanced: scikit-learn's "balanced" class weight n / (C * n_c) over the training part's labels
              (a class absent from the training part gets 1.0)
    sqrt:     the square root of the balanced weight (a softer correction: the focal term already
              up-weights the hard, often rare, examples)
    uniform:  1.0 for every class (no weighting)
    by name:  the named weights; classes not named get 1.0; a name that is not a class is an error.
    """
    from sklearn.utils.class_weight import compute_class_weight

    parsed = parse_alpha(spec)
    if parsed == "uniform":
        return [1.0] * len(class_names)
    if parsed in ("balanced", "sqrt"):
        labels = np.asarray(train_labels, dtype=int)
        present = np.unique(labels)
        weights = dict(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=labels)))
        power = 0.5 if parsed == "sqrt" else 1.0
        return [float(weights.get(c, 1.0)) ** power for c in range(len(class_names))]
    unknown = sorted(set(parsed) - set(class_names))
    if unknown:
        raise ConfigError(f"loss.alpha names {', '.join(unknown)}, not a class of this data set "
                          f"({', '.join(class_names)})",
                          hint="give alpha by these class names, or use --alpha balanced")
    return [float(parsed.get(name, 1.0)) for name in class_names]


def describe_alpha(alpha: list[float], class_names: list[str]) -> str:
    """'epidermal_cyst 0.57, lipoma 1.15, pilomatricoma 2.66' (what training prints and records)."""
    return ", ".join(f"{name} {w:.3g}" for name, w in zip(class_names, alpha))
