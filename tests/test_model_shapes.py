"""AGResNet18 / ResNet18: shapes, the feature/head split, gate ranges, pretrained loading."""

import pytest
import torch

from usedge.errors import ConfigError, ModelError
from usedge.train.model import AttentionGate, build_model, load_pretrained, normalise_attention


def test_ag_resnet18_shapes_224():
    torch.manual_seed(0)
    model = build_model("ag_resnet18", num_classes=3, gate_norm="paper").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, 224, 224))
        logits = model.forward_head(feats)
    assert feats["y1"].shape == (2, 128, 28, 28)
    assert feats["y2"].shape == (2, 256, 14, 14)
    assert feats["g"].shape == (2, 512, 7, 7)
    assert feats["a1"].shape == (2, 1, 28, 28) and feats["a2"].shape == (2, 1, 14, 14)
    assert logits.shape == (2, 3)
    assert [tuple(f.shape[1:2]) for f, _ in model.branch_maps(feats)] == [(128,), (256,), (512,)]


def test_forward_is_head_of_features():
    torch.manual_seed(0)
    model = build_model("ag_resnet18").eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_head(model.forward_features(x)))


def test_resnet18_baseline_shapes():
    model = build_model("resnet18", num_classes=3).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, 96, 96))
        assert feats["g"].shape == (2, 512, 3, 3)
        assert model.forward_head(feats).shape == (2, 3)
    assert model.conv1.in_channels == 1


@pytest.mark.parametrize("norm", ["paper", "softmax", "sigmoid"])
def test_gate_outputs_in_range(norm):
    torch.manual_seed(0)
    gate = AttentionGate(128, 512, 64, norm)
    x, g = torch.randn(2, 128, 16, 16), torch.randn(2, 512, 4, 4)
    y, alpha = gate(x, g)
    assert y.shape == x.shape and alpha.shape == (2, 1, 16, 16)
    assert torch.allclose(y, alpha * x)
    if norm == "paper":   # sigmoid of a softmax over H*W: (0.5, sigmoid(1)]
        assert alpha.min() > 0.5 and alpha.max() <= torch.sigmoid(torch.tensor(1.0)) + 1e-6
    elif norm == "softmax":
        assert alpha.min() >= 0 and torch.allclose(alpha.sum(dim=(2, 3)), torch.ones(2, 1), atol=1e-5)
    else:
        assert alpha.min() >= 0 and alpha.max() <= 1


def test_unknown_norm_and_arch_are_config_errors():
    with pytest.raises(ConfigError):
        normalise_attention(torch.zeros(1, 1, 2, 2), "tanh")
    with pytest.raises(ConfigError):
        build_model("vgg16")


def test_pretrained_from_local_file_sums_rgb_conv1(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    rgb = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(rgb.state_dict(), path)
    model = build_model("ag_resnet18")
    loaded = load_pretrained(model, str(path))
    assert "conv1.weight" in loaded and "layer4.1.bn2.running_var" in loaded
    assert torch.allclose(model.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer3[0].conv1.weight, rgb.layer3[0].conv1.weight)
    assert load_pretrained(model, "none") == []


def test_parameter_counts_and_shared_trunk():
    ag, plain = build_model("ag_resnet18"), build_model("resnet18")
    assert sum(p.numel() for p in ag.parameters()) == 11_894_889          # the paper's model
    trunk = {k: v.shape for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    assert trunk == {k: v.shape for k, v in ag.state_dict().items() if k in trunk}


def test_pretrained_conv1_random_keeps_conv1(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    model = build_model("ag_resnet18")
    before = model.conv1.weight.clone()
    loaded = load_pretrained(model, str(path), conv1="random")   # the authors re-initialised conv1
    assert "conv1.weight" not in loaded and torch.equal(model.conv1.weight, before)
    assert "layer1.0.conv1.weight" in loaded


def test_pretrained_missing_file_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_pretrained(build_model("resnet18"), str(tmp_path / "nope.pth"))


def test_imagenet_offline_is_one_line_model_error(monkeypatch):
    """No download in tests: the weights API is made to fail as it does offline."""
    from urllib.error import URLError

    from torchvision.models import ResNet18_Weights

    def offline(*_a, **_k):
        raise URLError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(ModelError, match="offline") as err:
        load_pretrained(build_model("ag_resnet18"), "imagenet")
    assert "\n" not in err.value.one_line()
