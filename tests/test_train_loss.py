"""Focal loss against a hand computation; alpha applied on the CPU; gamma 0 without alpha = CE."""

import math

import pytest
import torch
import torch.nn.functional as F

from usedge.errors import ConfigError
from usedge.train.loss import FocalLoss, build_loss


def test_focal_matches_hand_computation_with_alpha_on_cpu():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([0, 1])
    alpha, gamma = [0.75, 0.75, 0.25], 3.0
    expected = 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        z = sum(math.exp(v) for v in row)
        p = math.exp(row[t]) / z
        expected += -alpha[t] * (1 - p) ** gamma * math.log(p)
    expected /= 2
    loss = build_loss("focal", 3, gamma, alpha)(logits, target)
    assert loss.device.type == "cpu"
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    no_alpha = FocalLoss(gamma)(logits, target)
    assert no_alpha.item() != pytest.approx(expected, rel=1e-3)   # alpha really is applied


def test_focal_gamma0_without_alpha_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert FocalLoss(0.0, None)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert isinstance(build_loss("ce"), torch.nn.CrossEntropyLoss)


def test_focal_gradient_flows_and_alpha_follows_module():
    loss_fn = build_loss("focal", 3, 3.0, [0.75, 0.75, 0.25])
    assert "alpha" in dict(loss_fn.named_buffers())
    logits = torch.randn(4, 3, requires_grad=True)
    loss_fn(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bad_loss_config():
    with pytest.raises(ConfigError, match="alpha"):
        build_loss("focal", 3, 3.0, [1.0, 1.0])
    with pytest.raises(ConfigError):
        build_loss("hinge")
