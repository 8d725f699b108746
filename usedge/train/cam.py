"""Explanation maps for a usedge model: multi-branch CAM (the paper's), Grad-CAM, attention maps.

All maps are torch tensors N x C x h x w (CAM, per class) or N x 1 x H x W (per image), float32.

    multi_branch_cam(model, features)      -> N x C x H/8 x W/8   raw, every class (the ONNX `cam` output)
    full_resolution_cam(model, x, ...)     -> N x C x H x W       the same, resized to the input
    grad_cam(model, x, target)             -> N x 1 x H x W       Grad-CAM on layer4 (ReLU'd)
    attention_maps(features, size)         -> {"att1", "att2"}    the gates' alpha, resized
    CamHead(model)                         -> nn.Module x -> (probs N x C, cam N x C x H/8 x W/8)

The paper's CAM (authors' code, visualizations/CAM_plot.py): for class c and each branch
b in (y1, y2, layer4), sum_k W_b[c, k] * F_b[k] with W_b the branch's own linear head; resize
each to the input size and add the three. The final Linear(9 -> C) that mixes the branch logits is
ignored (in the authors' code the line that would use it discards its result). usedge keeps that
definition as `weighting="paper"` (default, and what the exported model carries) and offers
`weighting="exact"`, which folds the final layer in: W_eff_b[c] = sum_j W_final[c, 3b + j] W_b[j], so
the spatial mean of the CAM equals the class logit minus biases (when all branches share a grid).
Biases are left out in both (a constant offset does not localise anything).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from usedge.errors import ConfigError

WEIGHTINGS = ("paper", "exact")
MAP_TYPES = ("cam", "gradcam", "att1", "att2")


def branch_class_weights(model: nn.Module, features: dict[str, torch.Tensor],
                         weighting: str = "paper") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(feature map N x K x h x w, class weights C x K) per branch."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown CAM weighting '{weighting}'", hint=f"use one of {', '.join(WEIGHTINGS)}")
    branches = model.branch_maps(features)
    if weighting == "paper" or not hasattr(model, "classifier"):
        return [(fmap, head.weight) for fmap, head in branches]
    final = model.classifier.weight                      # C x (B * C)
    out = []
    for b, (fmap, head) in enumerate(branches):
        k = head.weight.shape[0]
        out.append((fmap, final[:, b * k:(b + 1) * k] @ head.weight))
    return out


def cam_grid_size(features: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The CAM grid: the y1/layer2 grid (H/8) when present, else the layer4 grid x 4 (H/32 * 4)."""
    if "y1" in features:
        return int(features["y1"].shape[-2]), int(features["y1"].shape[-1])
    g = features["g"]
    return int(g.shape[-2]) * 4, int(g.shape[-1]) * 4


def multi_branch_cam(model: nn.Module, features: dict[str, torch.Tensor],
                     weighting: str = "paper") -> torch.Tensor:
    """The paper's multi-branch CAM for EVERY class: N x C x h x w on the H/8 grid, raw, float32.

    Each branch's maps are weighted by its head's weights for each class (a 1x1 convolution, which
    exports to ONNX/TensorRT as a plain Conv), bilinearly resized to the H/8 grid and summed.
    No normalisation: the display normalises (min-max per map).
    """
    size = cam_grid_size(features)
    total = None
    for fmap, weight in branch_class_weights(model, features, weighting):
        cam = F.conv2d(fmap.float(), weight.float()[:, :, None, None])
        if tuple(cam.shape[-2:]) != size:
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        total = cam if total is None else total + cam
    return total


def full_resolution_cam(model: nn.Module, x: torch.Tensor, features: dict[str, torch.Tensor] | None = None,
                        weighting: str = "paper") -> torch.Tensor:
    """The multi-branch CAM resized (bilinear) to the input's H x W: N x C x H x W, raw."""
    if features is None:
        features = model.forward_features(x)
    cam = multi_branch_cam(model, features, weighting)
    return F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | list[int] | None = None,
             layer: str = "g") -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) on the last stage (layer4 = features['g']).

    target: class per image (default: the predicted class). Returns (map N x 1 x H x W >= 0 at the
    input size, logits N x C). The gradient includes every path from layer4 to the logit (the
    attention gates too), computed with autograd.
    """
    with torch.enable_grad():
        features = model.forward_features(x)
        act = features[layer]
        logits = model.forward_head(features)
        if target is None:
            target = logits.argmax(dim=1)
        target = torch.as_tensor(target, device=logits.device).reshape(-1)
        score = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, act)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return cam, logits.detach()


def attention_maps(features: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The attention gates' alpha maps resized (bilinear) to `size`: {"att1", "att2"} N x 1 x H x W.

    Empty for a model without gates (plain ResNet18).
    """
    out = {}
    for key, name in (("a1", "att1"), ("a2", "att2")):
        if key in features:
            out[name] = F.interpolate(features[key].float(), size=size, mode="bilinear", align_corners=False)
    return out


def select_class(cam: torch.Tensor, classes: torch.Tensor | list[int]) -> torch.Tensor:
    """N x C x h x w -> N x 1 x h x w, the map of one class per image."""
    idx = torch.as_tensor(classes, device=cam.device).reshape(-1, 1, 1, 1)
    return cam.gather(1, idx.expand(-1, 1, cam.shape[2], cam.shape[3]))


class CamHead(nn.Module):
    """The model with the bedside CAM as a second output: x -> (probs N x C, cam N x C x H/8 x W/8).

    `probs` is the softmax of the logits (what `usedge infer` reads as output 0); `cam` is the raw
    multi-branch CAM of every class on the H/8 grid (3 x 28 x 28 float32 = 9.2 KiB at 224 px).
    Export with output_names=CamHead.output_names.
    """

    output_names = ("probs", "cam")

    def __init__(self, model: nn.Module, weighting: str = "paper", softmax: bool = True):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"unknown CAM weighting '{weighting}'", hint=f"use one of {', '.join(WEIGHTINGS)}")
        self.model = model
        self.weighting = weighting
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        logits = self.model.forward_head(features)
        out = torch.softmax(logits, dim=1) if self.softmax else logits
        return out, multi_branch_cam(self.model, features, self.weighting)
