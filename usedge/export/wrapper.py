"""The module that is exported: image -> probs (softmax), and optionally the bedside CAM.

    ExportModel(model, with_cam=False)(x)  -> probs  N x C
    ExportModel(model, with_cam=True)(x)   -> (probs N x C, cam N x C x H/8 x W/8)

The CAM is the paper's multi-branch CAM of every class (usedge.train.cam.multi_branch_cam), raw;
the runtime normalises it for display.
"""

from __future__ import annotations

import torch
from torch import nn


INPUT_NAME = "image"


class ExportModel(nn.Module):
    """Wrap a usedge model (forward_features / forward_head) so its outputs are what the runtime reads."""

    def __init__(self, model: nn.Module, with_cam: bool = False):
        super().__init__()
        self.model = model
        self.with_cam = with_cam
        if with_cam:
            from usedge.train.cam import multi_branch_cam

            self._cam = multi_branch_cam

    @property
    def output_names(self) -> list[str]:
        return ["probs", "cam"] if self.with_cam else ["probs"]

    def forward(self, image: torch.Tensor):
        features = self.model.forward_features(image)
        probs = torch.softmax(self.model.forward_head(features), dim=1)
        if not self.with_cam:
            return probs
        return probs, self._cam(self.model, features)
