"""Heads: DeepLab-v3 ASPP head shapes and dropout, the attribute head's raw logits."""

import pytest
import torch
from torch import nn

from models.heads import ASPP_RATES, ClassificationHead, DenseHead, build_head


def test_dense_head_keeps_feature_resolution_and_sets_task_channels():
    head = build_head("dense", 32, 5, head_channels=16)
    assert head(torch.randn(2, 32, 4, 6)).shape == (2, 5, 4, 6)


def test_dense_head_is_aspp_with_study_rates_and_dropout():
    head = DenseHead(32, 3, head_channels=16)
    aspp = head[0]
    rates = [branch[0].dilation[0] for branch in aspp.convs[1:4]]
    assert rates == list(ASPP_RATES)
    assert len(aspp.convs) == 5  # 1x1, three atrous, image pooling
    dropouts = [m.p for m in aspp.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.3, 0.3]
    assert isinstance(head[-1], nn.Conv2d) and head[-1].out_channels == 3


def test_classification_head_returns_one_raw_logit_per_image():
    head = build_head("classification", 32, 1, head_channels=16).eval()
    assert not any(isinstance(m, nn.Sigmoid) for m in head.modules())
    with torch.no_grad():
        head.classifier[-1].bias.fill_(5.0)
        high = head(torch.randn(3, 32, 4, 4))
        head.classifier[-1].bias.fill_(-5.0)
        low = head(torch.randn(3, 32, 4, 4))
    assert high.shape == (3,)
    assert (high > 1).any() and (low < 0).any()  # a sigmoid would keep both inside [0, 1]


def test_classification_head_layout_and_tiny_feature_maps():
    head = ClassificationHead(32)
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.6, 0.4]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 1)]
    assert head(torch.randn(2, 32, 1, 1)).shape == (2,)


def test_unknown_head_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="dense"):
        build_head("pyramid", 8, 1)
