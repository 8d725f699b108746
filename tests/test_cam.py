"""Explanation maps: shapes, finiteness, the CAM's definition, and the ONNX `cam` output equal to torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from usedge.errors import ConfigError
from usedge.train.cam import (CamHead, attention_maps, branch_class_weights, full_resolution_cam, grad_cam,
                              multi_branch_cam, select_class)
from usedge.train.model import build_model

SIZE = 64  # input side for tests, pixels (multiple of 32)


@pytest.fixture(scope="module", params=["ag_resnet18", "resnet18"])
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, num_classes=3).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_multi_branch_cam_shape_and_finite(model, x):
    with torch.no_grad():
        cam = multi_branch_cam(model, model.forward_features(x))
    assert cam.shape == (2, 3, SIZE // 8, SIZE // 8)
    assert cam.dtype == torch.float32
    assert torch.isfinite(cam).all()


def test_multi_branch_cam_is_the_papers_sum(model, x):
    """Each branch: sum_k W_b[c, k] F_b[k], bilinearly resized to H/8, summed over branches."""
    with torch.no_grad():
        feats = model.forward_features(x)
        cam = multi_branch_cam(model, feats)
        want = 0
        for fmap, head in model.branch_maps(feats):
            b = torch.einsum("nkhw,ck->nchw", fmap, head.weight)
            want = want + F.interpolate(b, size=(SIZE // 8, SIZE // 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-4)


def test_exact_weighting_reproduces_logits_on_native_grids(model, x):
    """'exact' folds the final layer in: the branch CAMs' spatial means add up to the logits minus biases."""
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        zero = {k: torch.zeros_like(v) if k in ("y1", "y2", "g") else v for k, v in feats.items()}
        bias = model.forward_head(zero)  # the logits of all-zero features: every bias, passed through
        total = sum(torch.einsum("nkhw,ck->nc", fmap, w) / (fmap.shape[2] * fmap.shape[3])
                    for fmap, w in branch_class_weights(model, feats, "exact"))
    torch.testing.assert_close(total + bias, logits, rtol=1e-4, atol=1e-4)


def test_full_resolution_grad_cam_attention(model, x):
    with torch.no_grad():
        feats = model.forward_features(x)
    full = full_resolution_cam(model, x, feats)
    assert full.shape == (2, 3, SIZE, SIZE) and torch.isfinite(full).all()
    g, logits = grad_cam(model, x)
    assert g.shape == (2, 1, SIZE, SIZE) and torch.isfinite(g).all() and (g >= 0).all()
    assert logits.shape == (2, 3)
    g_other, _ = grad_cam(model, x, target=[0, 1])
    assert g_other.shape == g.shape
    att = attention_maps(feats, (SIZE, SIZE))
    if model.arch == "ag_resnet18":
        assert set(att) == {"att1", "att2"}
        for a in att.values():
            assert a.shape == (2, 1, SIZE, SIZE) and torch.isfinite(a).all()
    else:
        assert att == {}
    picked = select_class(full, [2, 0])
    torch.testing.assert_close(picked[:, 0], torch.stack([full[0, 2], full[1, 0]]))


def test_grad_cam_matches_manual_gradient():
    """Grad-CAM of plain ResNet18: d logit_c / d g = W_fc[c] / (h w) everywhere, so the map is ReLU(CAM)/(h w)."""
    torch.manual_seed(0)
    m = build_model("resnet18").eval()
    with torch.no_grad():
        m.fc.weight.abs_()  # features are >= 0 (ReLU): a positive CAM, so the ReLU does not zero it
    x = torch.randn(1, 1, SIZE, SIZE)
    g, logits = grad_cam(m, x, target=[1])
    with torch.no_grad():
        feats = m.forward_features(x)
        h, w = feats["g"].shape[-2:]
        cam = F.relu(torch.einsum("nkhw,k->nhw", feats["g"], m.fc.weight[1]))[:, None] / (h * w)
        want = F.interpolate(cam, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert want.abs().max() > 0
    torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)


def test_unknown_weighting_is_a_config_error(model, x):
    with pytest.raises(ConfigError):
        multi_branch_cam(model, model.forward_features(x), weighting="nope")


@pytest.mark.parametrize("weighting", ["paper", "exact"])
def test_onnx_cam_output_equals_torch(tmp_path, weighting):
    """The bedside CAM exported as a second ONNX output (dynamo, opset 18) equals the torch CAM."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    head = CamHead(build_model("ag_resnet18"), weighting=weighting).eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    prog = torch.onnx.export(head, (x,), dynamo=True, opset_version=18, input_names=["image"],
                             output_names=list(CamHead.output_names),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=16)}})
    path = tmp_path / "cam.onnx"
    prog.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["probs", "cam"]
    for n in (1, 3):  # dynamic batch
        xx = torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(n))
        probs, cam = sess.run(None, {"image": xx.numpy()})
        with torch.no_grad():
            tprobs, tcam = head(xx)
        assert cam.shape == (n, 3, SIZE // 8, SIZE // 8)
        np.testing.assert_allclose(cam, tcam.numpy(), rtol=1e-4, atol=1e-4 * float(tcam.abs().max()))
        np.testing.assert_allclose(probs, tprobs.numpy(), atol=1e-5)
