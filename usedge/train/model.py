"""AGResNet18: torchvision ResNet18 with two grid attention gates (the paper's "combined CNN").

    x (N,1,224,224) -> conv1(1ch)/bn/relu/maxpool -> layer1 -> layer2 (128@28) -> layer3 (256@14)
                    -> layer4 (512@7) = g
    y1, a1 = gate1(layer2, g);  y2, a2 = gate2(layer3, g)
    logits = Linear(9->3)(cat(head1(GAP y1), head2(GAP y2), head3(GAP g)))

`forward_features` returns every map (for CAM and attention maps); `forward_head` the logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from usedge.errors import ConfigError, ModelError
from usedge.train.config import ModelConfig

GATE_NORMS = ("paper", "softmax", "sigmoid")
ARCHS = ("ag_resnet18", "resnet18")


def normalise_attention(psi: torch.Tensor, norm: str) -> torch.Tensor:
    """psi (N,1,H,W) -> alpha (N,1,H,W).

    paper:   spatial softmax then sigmoid (the authors' code; alpha in (0.5, 0.73], ~0.5 everywhere)
    softmax: spatial softmax over H*W (sums to 1; Schlemper et al.)
    sigmoid: element-wise sigmoid (Schlemper et al.)
    """
    if norm == "sigmoid":
        return torch.sigmoid(psi)
    n, c, h, w = psi.shape
    soft = torch.softmax(psi.reshape(n, c, h * w), dim=2).reshape(n, c, h, w)
    if norm == "softmax":
        return soft
    if norm == "paper":
        return torch.sigmoid(soft)
    raise ConfigError(f"unknown gate normalisation '{norm}'", hint=f"use one of {', '.join(GATE_NORMS)}")


class AttentionGate(nn.Module):
    """Grid attention gate: x gated by the coarser g. Returns (alpha * x, alpha)."""

    def __init__(self, in_channels: int, gating_channels: int, inter_channels: int, norm: str):
        super().__init__()
        if norm not in GATE_NORMS:
            raise ConfigError(f"unknown gate normalisation '{norm}'", hint=f"use one of {', '.join(GATE_NORMS)}")
        self.norm = norm
        self.theta = nn.Conv2d(in_channels, inter_channels, 1, bias=False)
        self.phi = nn.Conv2d(gating_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta(x)
        phi = F.interpolate(self.phi(g), size=theta.shape[-2:], mode="bilinear", align_corners=False)
        alpha = normalise_attention(self.psi(F.relu(theta + phi)), self.norm)
        return alpha * x, alpha


class ResNetTrunk(nn.Module):
    """torchvision's ResNet18 without its head, with a 1-channel conv1: stem, layer1..layer4.

    Shared by AGResNet18 and the plain ResNet18 baseline (same state_dict keys as torchvision's, so
    `load_pretrained` fits both). `trunk(x)` returns the maps after layer2, layer3 and layer4.
    """

    def __init__(self, in_channels: int = 1):
        super().__init__()
        net = resnet18(weights=None)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2 = self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))
        x3 = self.layer3(x2)
        return x2, x3, self.layer4(x3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class AGResNet18(ResNetTrunk):
    arch = "ag_resnet18"

    def __init__(self, num_classes: int = 3, gate_norm: str = ModelConfig.gate_norm, in_channels: int = 1):
        super().__init__(in_channels)
        self.num_classes = num_classes
        self.gate_norm = gate_norm
        self.gate1 = AttentionGate(128, 512, 512, gate_norm)
        self.gate2 = AttentionGate(256, 512, 512, gate_norm)
        self.head1 = nn.Linear(128, num_classes)
        self.head2 = nn.Linear(256, num_classes)
        self.head3 = nn.Linear(512, num_classes)
        self.classifier = nn.Linear(3 * num_classes, num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps: y1 (128@H/8), y2 (256@H/16), g (512@H/32), attention a1, a2 (1@...)."""
        x2, x3, g = self.trunk(x)
        y1, a1 = self.gate1(x2, g)
        y2, a2 = self.gate2(x3, g)
        return {"y1": y1, "y2": y2, "g": g, "a1": a1, "a2": a2}

    def branch_maps(self, features: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, nn.Linear]]:
        """(feature map, its linear head) per branch: what the paper's multi-branch CAM weighs."""
        return [(features["y1"], self.head1), (features["y2"], self.head2), (features["g"], self.head3)]

    def forward_head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = [head(fmap.mean(dim=(2, 3))) for fmap, head in self.branch_maps(features)]
        return self.classifier(torch.cat(logits, dim=1))


class ResNet18(ResNetTrunk):
    """Plain ResNet18 baseline with a 1-channel conv1, same feature/head split."""

    arch = "resnet18"

    def __init__(self, num_classes: int = 3, in_channels: int = 1):
        super().__init__(in_channels)
        self.num_classes = num_classes
        self.fc = nn.Linear(512, num_classes)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"g": self.trunk(x)[2]}

    def branch_maps(self, features: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, nn.Linear]]:
        return [(features["g"], self.fc)]

    def forward_head(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(features["g"].mean(dim=(2, 3)))


def build_model(arch: str = "ag_resnet18", num_classes: int = 3, gate_norm: str = ModelConfig.gate_norm) -> nn.Module:
    if arch == "ag_resnet18":
        return AGResNet18(num_classes=num_classes, gate_norm=gate_norm)
    if arch == "resnet18":
        return ResNet18(num_classes=num_classes)
    raise ConfigError(f"unknown architecture '{arch}'", hint=f"use one of {', '.join(ARCHS)}")


def load_pretrained(model: nn.Module, source: str, conv1: str = "sum_rgb") -> list[str]:
    """Initialise the backbone from `imagenet` (torchvision weights API) or a local weight file.

    conv1 = sum_rgb: the RGB conv1 weights are summed into the single gray channel (a gray image
    then gives the response of the same image in RGB); random: conv1 keeps its random initialisation
    (the authors' code re-initialised conv1). Returns the keys that were loaded.
    """
    if source == "none":
        return []
    if source == "imagenet":
        try:
            from torchvision.models import ResNet18_Weights

            state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # offline, proxy, hub blocked
            raise ModelError(
                f"could not fetch torchvision's ImageNet ResNet18 weights ({type(exc).__name__})",
                hint="this machine is offline: download resnet18-f37072fd.pth elsewhere and pass "
                     "--pretrained PATH, or use --pretrained none",
            ) from exc
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelError("pretrained weight file not found", path=path,
                             hint="pass --pretrained none|imagenet|PATH to an existing .pth file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"cannot read pretrained weights ({exc.__class__.__name__})", path=path,
                             hint="give a torch state_dict saved with torch.save") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    state = dict(state)
    if conv1 == "random":
        state.pop("conv1.weight", None)
    elif "conv1.weight" in state and state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError("no weight in the file matches this model's backbone", path=source,
                         hint="use torchvision ResNet18 weights or --pretrained none")
    model.load_state_dict(usable, strict=False)
    return sorted(usable)
