"""Focal loss against a hand computation; alpha applied on the CPU; gamma 0 without alpha = CE."""

import math

import pytest
import torch
import torch.nn.functional as F

from usedge.errors import ConfigError
from usedge.train.config import load_config
from usedge.train.loss import FocalLoss, build_loss, resolve_alpha


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


def test_classes_that_are_not_the_papers_get_no_3x_down_weighting():
    """The issue-21 case: three classes that are not the paper's, balanced counts -> equal weights."""
    names = ["benign", "malignant", "normal"]
    labels = [0] * 40 + [1] * 40 + [2] * 40
    alpha = resolve_alpha(load_config().loss.alpha, names, labels)
    assert max(alpha) / min(alpha) == pytest.approx(1.0)
    imbalanced = resolve_alpha("balanced", names, [0] * 60 + [1] * 40 + [2] * 20)
    assert imbalanced == pytest.approx([120 / (3 * 60), 120 / (3 * 40), 120 / (3 * 20)])  # rare class weighted up
    assert resolve_alpha("uniform", names, labels) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("n_classes", [2, 4, 5])
def test_any_number_of_classes(n_classes):
    names = [f"class{k}" for k in range(n_classes)]
    labels = [k for k in range(n_classes) for _ in range(k + 2)]
    alpha = resolve_alpha("balanced", names, labels)
    assert len(alpha) == n_classes and alpha == sorted(alpha, reverse=True)
    build_loss("focal", n_classes, 3.0, alpha)


def test_alpha_by_name_and_unknown_name_errors():
    names = ["epidermal_cyst", "lipoma", "pilomatricoma"]
    paper = load_config("paper", {"data.policy": "p.json"}).loss.alpha
    assert resolve_alpha(paper, names, [0, 1, 2]) == [0.75, 0.75, 0.25]
    assert resolve_alpha("lipoma=0.5", names, [0, 1, 2]) == [1.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="cyst.*not a class"):
        resolve_alpha("lipoma=0.5,cyst=1.0", names, [0, 1, 2])
    with pytest.raises(ConfigError, match="not a class"):          # the paper's names on other data
        resolve_alpha(paper, ["benign", "malignant", "normal"], [0, 1, 2])
