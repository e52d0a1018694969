"""Loss combination: Kendall uncertainty weighting, plain and fixed weighted sums."""

import torch

from engine import loss_weighting


def test_uncertainty_weighting_matches_formula_and_drops_stopped_tasks() -> None:
    weighting = loss_weighting.build("uncertainity", ["seg", "depth"])
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = {"seg": torch.tensor(2.0), "depth": torch.tensor(3.0)}
    expected = torch.exp(torch.tensor(-0.5)) * 2.0 + 0.5 + torch.exp(torch.tensor(1.0)) * 3.0 - 1.0
    assert torch.allclose(weighting(losses), expected)
    only_seg = torch.exp(torch.tensor(-0.5)) * 2.0 + 0.5
    assert torch.allclose(weighting(losses, active=["seg"]), only_seg)


def test_uncertainty_log_vars_receive_gradients() -> None:
    weighting = loss_weighting.build("uncertainity", ["a", "b"])
    weighting({"a": torch.tensor(2.0), "b": torch.tensor(0.5)}).backward()
    # d/ds (e^-s L + s) at s = 0 is 1 - L
    assert torch.allclose(weighting.log_vars.grad, torch.tensor([-1.0, 0.5]))


def test_sum_and_weighted_sum() -> None:
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    assert loss_weighting.build("sum", ["a", "b"])(losses).item() == 5.0
    assert loss_weighting.build("wt_sum", ["a", "b"], {"a": 0.5, "b": 1.0})(losses).item() == 4.0
    assert loss_weighting.build("wt_sum", ["a", "b"])(losses).item() == 2.5  # the study's wt_sum: the mean
    single = loss_weighting.build("uncertainity", ["a"])
    assert list(single.parameters()) == [] and single({"a": torch.tensor(2.0)}).item() == 2.0
