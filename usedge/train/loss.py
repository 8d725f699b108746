"""Losses: multi-class focal loss (the paper's default) and cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from usedge.errors import ConfigError


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
    """focal | ce. alpha must have one weight per class (or be empty for none)."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name != "focal":
        raise ConfigError(f"unknown loss '{name}'", hint="use focal or ce")
    if alpha and len(alpha) != num_classes:
        raise ConfigError(f"loss.alpha has {len(alpha)} values for {num_classes} classes",
                          hint="give one alpha per class (alphabetical class order) or alpha = []")
    return FocalLoss(gamma=gamma, alpha=alpha or None)
