"""The module that is exported: image -> probs (softmax), and optionally the bedside CAM.

    ExportModel(model, with_cam=False)(x)  -> probs  N x C
    ExportModel(model, with_cam=True)(x)   -> (probs N x C, cam N x C x H/8 x W/8)

The CAM is the multi-branch CAM of every class (usedge.train.cam.multi_branch_cam), raw; the runtime
normalises it for display. cam_weighting "exact" (default: folds the final layer into the branch
weights: the CAM of the logits the model outputs) or "paper" (the paper's per-branch weights). Neither
localised the lesion better than a centred Gaussian in benchmarks/explain_localisation.py.
"""

from __future__ import annotations

import torch
from torch import nn


INPUT_NAME = "image"


class ExportModel(nn.Module):
    """Wrap a usedge model (forward_features / forward_head) so its outputs are what the runtime reads."""

    def __init__(self, model: nn.Module, with_cam: bool = False, cam_weighting: str = "exact"):
        super().__init__()
        self.model = model
        self.with_cam = with_cam
        self.cam_weighting = cam_weighting
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
        return probs, self._cam(self.model, features, self.cam_weighting)
