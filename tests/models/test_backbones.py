"""Backbones: output stride 8, the study's ResNet-D layout, width scaling and ImageNet-weight errors."""

import hashlib
import urllib.error

import pytest
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from models import backbones
from models.backbones import BACKBONES, DilatedBasicBlock, build_backbone, scaled_channels
from utils.errors import ConfigError


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(("name", "width", "channels"), [("resnetd18", 0.25, 128), ("resnetd50", 0.125, 256)])
def test_resnet_d_output_is_stride_8(name, width, channels):
    backbone = build_backbone(name, width=width)
    features = backbone(torch.randn(2, 3, 32, 48))
    assert backbone.out_channels == channels
    assert features.shape == (2, channels, 4, 6)


def test_torchvision_resnet18_is_dilated_to_stride_8():
    backbone = build_backbone("resnet18")
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 512, 4, 4)
    assert backbone.layer4[1].conv1.dilation == (4, 4)


def test_resnet_d50_layout_follows_the_study():
    backbone = build_backbone("resnetd50")
    stem = _convs(backbone.stem)
    assert [tuple(c.weight.shape) for c in stem] == [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3)]
    assert [c.stride for c in stem] == [(2, 2), (1, 1), (1, 1)]
    assert isinstance(backbone.stem[-1], nn.MaxPool2d) and backbone.stem[-1].stride == 2
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert all(isinstance(block, tv_resnet.Bottleneck) for block in backbone.layer1)
    # The 128-channel stem output needs a 1x1 conv + BN shortcut into layer1 (256 channels).
    shortcut = backbone.layer1[0].downsample
    assert tuple(shortcut[0].weight.shape) == (256, 128, 1, 1) and isinstance(shortcut[1], nn.BatchNorm2d)
    assert backbone.layer2[0].conv2.stride == (2, 2) and backbone.layer2[0].downsample[0].stride == (2, 2)
    for layer, dilation in ((backbone.layer3, 2), (backbone.layer4, 4)):
        for block in layer:
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
            assert block.conv2.stride == (1, 1)
    assert backbone.out_channels == 2048


def test_resnet_d101_block_counts_without_running_it():
    backbone = build_backbone("resnetd101", width=0.125)
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert backbone.out_channels == 64 * 4


def test_resnet_d18_dilates_both_convs_of_its_basic_blocks():
    backbone = build_backbone("resnetd18", width=0.125)
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    for block in backbone.layer4:
        assert isinstance(block, DilatedBasicBlock)
        assert block.conv1.dilation == block.conv2.dilation == (4, 4)
        assert block.conv1.padding == block.conv2.padding == (4, 4)


def test_width_scales_every_channel_count():
    assert scaled_channels(64, 1.0) == 64 and scaled_channels(512, 1.0) == 512
    assert scaled_channels(64, 0.125) == 8 and scaled_channels(100, 0.3) == 32
    assert scaled_channels(64, 0.05) == 3 and scaled_channels(64, 0.001) == 1
    backbone = build_backbone("resnetd50", width=0.25)
    assert tuple(_convs(backbone.stem)[0].weight.shape) == (16, 3, 3, 3)
    assert backbone.out_channels == 512


def test_registry_lists_the_config_backbones_and_rejects_others():
    assert set(BACKBONES) == {f"{family}{depth}" for family in ("resnetd", "resnet") for depth in (18, 34, 50, 101)}
    with pytest.raises(ConfigError, match="resnetd50"):
        build_backbone("resnet152")


def test_pretrained_needs_a_torchvision_resnet_at_full_width():
    with pytest.raises(ConfigError, match="pretrained"):
        build_backbone("resnetd50", pretrained=True)
    with pytest.raises(ConfigError, match="backbone_width"):
        build_backbone("resnet18", width=0.5, pretrained=True)


def _offline(monkeypatch, hub_dir):
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_pretrained_offline_without_cached_file_names_file_and_folder(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as error:
        build_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "checkpoints") in message
    assert "\n" not in message


def test_pretrained_loads_cached_weights_offline_after_a_hash_check(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    reference = tv_resnet.resnet18()
    saved = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), saved)
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    path = tmp_path / "checkpoints" / f"resnet18-{digest[:8]}.pth"  # torchvision's naming: <arch>-<sha256 prefix>
    path.parent.mkdir(parents=True)
    saved.rename(path)
    monkeypatch.setattr(backbones, "weights_file", lambda weights: path)
    backbone = build_backbone("resnet18", pretrained=True)
    assert torch.equal(backbone.stem[0].weight, reference.conv1.weight)
    assert torch.equal(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    forged = tmp_path / "checkpoints" / "resnet18-00000000.pth"
    path.rename(forged)
    monkeypatch.setattr(backbones, "weights_file", lambda weights: forged)
    with pytest.raises(ConfigError, match="SHA-256 does not start with 00000000"):
        build_backbone("resnet18", pretrained=True)


def test_pretrained_weights_never_run_a_pickle(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    path = tmp_path / "checkpoints" / "resnet18-abc.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1), "x": tv_resnet.ResNet18_Weights.DEFAULT}, path)  # an object weights_only refuses
    monkeypatch.setattr(backbones, "weights_file", lambda weights: path)
    monkeypatch.setattr(backbones.hashlib, "sha256", lambda data: type("H", (), {"hexdigest": lambda self: "abc"})())
    with pytest.raises(ConfigError, match="cannot load ImageNet weights"):
        build_backbone("resnet18", pretrained=True)
