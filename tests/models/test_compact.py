"""models.compact: the compact model's eval outputs equal the sparse model's, and what it removes.

Zero groups are set by hand; BatchNorm gets random running statistics and affine parameters,
so folded constants and dead channels carry non-trivial values. Outputs must agree to
1e-4 of their largest value (float32, CPU), on random images and on images of the data pipeline;
any random zero pattern to 1e-10 in float64 (``test_any_zero_pattern_is_exact``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import data
from data.synthetic import make_nyud
from engine import export, measure
from engine.trial import build_trial
from models.backbones import build_backbone
from models.compact import CompactModel, compact, load, save
from models.heads import build_head
from models.multitask import MultiTaskModel
from tests import tiny
from utils import checkpoint as ckpt
from utils import config
from utils.errors import DataError
from utils.io import write_text

TOLERANCE = 1e-4
SIZE = (32, 48)
HEADS = {"seg": ("dense", 5), "depth": ("dense", 1), "attr": ("classification", 1)}


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions run faster on one thread


def make_model(backbone: str = "resnetd18", heads: dict[str, tuple[str, int]] = HEADS, seed: int = 0) -> MultiTaskModel:
    """A small model in eval mode with random BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    bb = build_backbone(backbone, width=1.0 if backbone.startswith("resnet") and not backbone.startswith("resnetd") else 0.125)
    model = MultiTaskModel(bb, nn.ModuleDict({
        task: build_head(kind, bb.out_channels, out, head_channels=8) for task, (kind, out) in heads.items()
    }))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
    return model.eval()


def differences(sparse: nn.Module, small: nn.Module, images: Tensor) -> dict[str, float]:
    """Per task: max |sparse − compact| / max |sparse|."""
    with torch.no_grad():
        expected, got = sparse(images), small(images)
    assert list(got) == list(expected)
    for task, value in expected.items():
        assert got[task].shape == value.shape, task
        assert value.abs().max() > 0, task
    return {task: float((value - got[task]).abs().max() / value.abs().max()) for task, value in expected.items()}


def assert_exact(sparse: nn.Module, small: nn.Module, images: Tensor | None = None) -> None:
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1)) if images is None else images
    worst = differences(sparse, small, images)
    assert max(worst.values()) <= TOLERANCE, worst


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folded(model: nn.Module, within: nn.Module | None = None) -> int:
    """BatchNorm channels, backbone and heads (of ``within`` only, when given): their γ and β become one conv bias in the compact model."""
    return sum(m.num_features for m in (within or model).modules() if isinstance(m, nn.BatchNorm2d))


def flops(model: nn.Module, size: tuple[int, int] = SIZE) -> int:
    return measure.count_flops(model, torch.zeros(1, 3, *size, dtype=next(model.parameters()).dtype))


def zero_groups(weight: Tensor, groups: list[int] | slice) -> None:
    with torch.no_grad():
        weight[:, groups] = 0


@pytest.fixture(scope="module")
def pipeline_images(tmp_path_factory: pytest.TempPathFactory) -> Tensor:
    """Eight images as the data pipeline gives them (synthetic NYUD_MT, ImageNet-normalised)."""
    root = make_nyud(tmp_path_factory.mktemp("data") / "nyud", num_images=10, height=SIZE[0], width=SIZE[1], seed=5)
    cfg = config.validate(tiny.tiny_raw("compact", tmp_path_factory.mktemp("runs"), root))
    splits = data.build(cfg)
    return torch.stack([splits.train[i]["image"] for i in range(min(8, len(splits.train)))])


@pytest.mark.parametrize("backbone", ["resnetd18", "resnetd50"])
def test_without_zero_groups_the_compact_model_is_the_same_model(backbone: str, pipeline_images: Tensor) -> None:
    """Equal outputs in float64 (BatchNorm folding only reorders arithmetic; in float32 its rounding, of the
    scale of the terms, exceeds an element-wise 1e-5 on small outputs for some seeds, in both models alike)."""
    model = make_model(backbone).double()
    small = compact(model)
    assert isinstance(small, CompactModel) and not small.training
    assert params(small) == params(model) - folded(model) and flops(small) == flops(model)
    assert all(block["shortcut_index"] is None for stage in small.spec["backbone"]["stages"] for block in stage)
    random_images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for images in (random_images.double(), pipeline_images.double()):
            expected, got = model(images), small(images)
            for task, value in expected.items():
                torch.testing.assert_close(got[task], value, rtol=0, atol=1e-10 * float(value.abs().max()))


@pytest.mark.parametrize("backbone", ["resnetd18", "resnetd50"])
def test_partially_zero_layers_on_random_and_pipeline_images(backbone: str, pipeline_images: Tensor) -> None:
    model = make_model(backbone)
    gen = torch.Generator().manual_seed(2)
    for weight in model.backbone.parameters():
        if weight.ndim == 4 and weight.shape[1] > 3:
            zero_groups(weight, torch.rand(weight.shape[1], generator=gen).lt(0.4).nonzero().flatten().tolist())
    small = compact(model)
    assert_exact(model, small)
    assert_exact(model, small, pipeline_images)
    assert params(small) < 0.8 * params(model) and flops(small) < 0.8 * flops(model)


def test_parameters_and_flops_drop_by_the_zeroed_share() -> None:
    """Half the input groups of layer2[1].conv2 zero: conv1 loses half its filters, bn1 half its channels."""
    model = make_model()
    block = model.backbone.layer2[1]
    planes = block.conv1.out_channels
    zero_groups(block.conv2.weight, slice(0, planes // 2))
    small = compact(model)
    conv1_weights = planes // 2 * block.conv1.in_channels * 9
    conv2_weights = block.conv2.out_channels * planes // 2 * 9
    kept_bn = folded(model) - planes // 2
    assert params(model) - params(small) == conv1_weights + conv2_weights + 2 * (planes // 2) + kept_bn
    h, w = SIZE[0] // 8, SIZE[1] // 8  # layer2 runs at 1/8 resolution
    assert flops(model) - flops(small) == 2 * (conv1_weights + conv2_weights) * h * w
    unit = small.spec["backbone"]["stages"][1][1]["branch"][0]
    assert unit["kept"] == list(range(planes // 2, planes)) and unit["index"] is None
    assert_exact(model, small)


@pytest.mark.parametrize(("backbone", "last"), [("resnetd18", "conv2"), ("resnetd50", "conv3")])
def test_a_fully_zero_residual_branch_becomes_a_constant(backbone: str, last: str) -> None:
    model = make_model(backbone)
    block = model.backbone.layer3[1]
    with torch.no_grad():
        getattr(block, last).weight.zero_()
    small = compact(model)
    compact_block = small.backbone.layer3[1]
    assert compact_block.branch is None and compact_block.constant.shape == (block.conv1.in_channels,)
    removed = sum(p.numel() for name, p in block.named_parameters() if not name.startswith("downsample"))
    branch_bn = folded(model, block) - (block.downsample[1].num_features if block.downsample is not None else 0)
    assert params(model) - params(small) == removed + folded(model) - branch_bn
    assert_exact(model, small)


def test_a_zero_inner_conv_folds_into_the_1x1_after_it() -> None:
    """Bottleneck conv2 all zero: its outputs are BatchNorm constants, conv3 (1x1) folds them: a constant branch."""
    model = make_model("resnetd50")
    with torch.no_grad():
        model.backbone.layer2[2].conv2.weight.zero_()
    small = compact(model)
    assert small.backbone.layer2[2].branch is None
    assert_exact(model, small)


def test_constants_before_a_padded_3x3_conv_are_kept() -> None:
    """BasicBlock conv1 all zero: relu(bn1(0)) feeds a zero-padded 3x3 conv, not constant at the borders.

    Positive constants stay as channels (conv1 keeps one zeroed input), zero ones go.
    """
    model = make_model()
    block = model.backbone.layer1[1]
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.bn1.bias[: block.bn1.num_features // 2] = -10.0  # relu(bn1(0)) = 0 for these channels
        block.bn1.bias[block.bn1.num_features // 2:] = 3.0
    small = compact(model)
    unit = small.spec["backbone"]["stages"][0][1]["branch"][0]
    assert unit["in"] == 1 and unit["kept"] == list(range(block.bn1.num_features // 2, block.bn1.num_features))
    assert_exact(model, small)


def test_stream_channels_zero_in_every_consumer_leave_the_stream() -> None:
    model = make_model()
    layer4 = model.backbone.layer4
    channel = 3
    zero_groups(layer4[1].conv1.weight, [channel])
    for head in model.heads.values():
        for module in head.modules():
            if isinstance(module, nn.Conv2d) and module.in_channels == model.backbone.out_channels:
                zero_groups(module.weight, [channel])
    small = compact(model)
    stages = small.spec["backbone"]["stages"]
    assert channel not in stages[3][0]["kept"] and channel not in stages[3][1]["kept"]
    assert small.backbone.out_channels == model.backbone.out_channels - 1
    assert stages[3][0]["shortcut"]["out"] == model.backbone.out_channels - 1  # the downsample lost the filter too
    assert_exact(model, small)


def test_a_channel_only_the_heads_dropped_leaves_the_last_block_only() -> None:
    """Layer4[0]'s output channel still feeds layer4[1].conv1, so only layer4[1] stops producing it."""
    model = make_model(heads={"seg": ("dense", 5)})
    channel = 5
    for module in model.heads["seg"].modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == model.backbone.out_channels:
            zero_groups(module.weight, [channel])
    small = compact(model)
    first, last = small.spec["backbone"]["stages"][3]
    assert channel in first["kept"] and channel not in last["kept"]
    assert last["shortcut_index"] == [i for i in range(model.backbone.out_channels) if i != channel]
    assert_exact(model, small)


def test_each_head_keeps_only_the_channels_it_reads() -> None:
    model = make_model()
    channels = model.backbone.out_channels
    dropped = list(range(0, channels, 2))
    for module in model.heads["seg"].modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == channels:
            zero_groups(module.weight, dropped)
    zero_groups(model.heads["attr"].features[0].weight, slice(0, channels))  # reads nothing: keeps one zero column
    small = compact(model)
    heads = small.spec["heads"]
    assert heads["seg"]["in_channels"] == channels - len(dropped) and heads["seg"]["index"] is not None
    assert heads["depth"]["in_channels"] == channels and heads["depth"]["index"] is None
    assert heads["attr"]["in_channels"] == 1
    assert small.backbone.out_channels == channels  # the depth head still reads every channel
    assert_exact(model, small)


def test_channels_no_head_reads_leave_the_backbone() -> None:
    model = make_model(heads={"seg": ("dense", 5), "attr": ("classification", 1)})
    channels = model.backbone.out_channels
    for head in model.heads.values():
        for module in head.modules():
            if isinstance(module, nn.Conv2d) and module.in_channels == channels:
                zero_groups(module.weight, slice(channels // 2, channels))
    small = compact(model)
    assert small.backbone.out_channels == channels // 2
    assert flops(small) < flops(model)
    assert_exact(model, small)


def test_singletask_and_torchvision_resnet18_dilated() -> None:
    model = make_model("resnet18", heads={"depth": ("dense", 1)})
    gen = torch.Generator().manual_seed(3)
    for weight in model.backbone.parameters():
        if weight.ndim == 4 and weight.shape[1] > 3:
            zero_groups(weight, torch.rand(weight.shape[1], generator=gen).lt(0.5).nonzero().flatten().tolist())
    small = compact(model)
    assert small.backbone.layer4[1].branch[0].conv.dilation == (4, 4)
    assert params(small) < 0.6 * params(model)
    assert_exact(model, small, torch.randn(2, 3, 32, 32, generator=gen))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), backbone=st.sampled_from(["resnetd18", "resnetd50"]))
@example(seed=9, backbone="resnetd50")
def test_any_zero_pattern_is_exact(seed: int, backbone: str) -> None:
    """Random zero groups, whole zero layers and zero filters anywhere in backbone and head inputs.

    In float64: the removal is exact arithmetic, while a float32 output that is itself cancellation
    (a head whose inputs are mostly zeroed: 2e-4 from terms of order 1) carries rounding of the
    terms' scale in the dense model as much as in the compact one (seed 9, resnetd50)."""
    model = make_model(backbone, seed=seed).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.ndim != 4:
                continue
            draw = float(torch.rand((), generator=gen))
            if draw < 0.1:
                weight.zero_()
            elif draw < 0.8:
                weight[:, torch.rand(weight.shape[1], generator=gen) < torch.rand((), generator=gen)] = 0
            if torch.rand((), generator=gen) < 0.1:
                weight[torch.rand(weight.shape[0], generator=gen) < 0.5] = 0
    small = compact(model)
    images = torch.randn(2, 3, *SIZE, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(images), small(images)
    for task, value in expected.items():
        assert got[task].dtype == torch.float64
        assert (value - got[task]).abs().max() <= 1e-10 * value.abs().max().clamp_min(1e-30), task


def test_forward_contract_matches_the_multitask_model() -> None:
    model = make_model()
    small = compact(model)
    outputs = small(torch.randn(2, 3, *SIZE), tasks=["attr"])
    assert list(outputs) == ["attr"] and outputs["attr"].shape == (2,)
    assert small(torch.randn(1, 3, *SIZE))["seg"].shape == (1, 5, *SIZE)
    with pytest.raises(KeyError, match="nope"):
        small(torch.randn(1, 3, *SIZE), tasks=["nope"])
    assert isinstance(small.output_layer("seg"), nn.Conv2d)


def _layout_of(net: nn.Module) -> torch.memory_format:
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    if all(w.is_contiguous(memory_format=torch.channels_last) for w in convs):
        return torch.channels_last
    assert all(w.is_contiguous() for w in convs)
    return torch.contiguous_format


def fake_clock(monkeypatch: pytest.MonkeyPatch, small: CompactModel, costs: dict[torch.memory_format, float]) -> list[float]:
    """Replace the layout timer by one where each reading advances by the cost of ``small``'s current layout."""
    now = [0.0]

    def clock() -> float:
        now[0] += costs[small.layout]
        return now[0]

    monkeypatch.setattr("models.compact._clock", clock)
    return now


def test_the_compact_model_runs_the_layout_timed_faster_per_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock makes NCHW look faster at one shape and channels-last at another: each shape gets its own, once."""
    model = make_model()
    zero_groups(model.backbone.layer2[1].conv1.weight, slice(0, 3))
    small = compact(model)
    assert _layout_of(small) == small.layout == torch.channels_last
    costs = {torch.channels_last: 2.0, torch.contiguous_format: 1.0}
    now = fake_clock(monkeypatch, small, costs)
    images = torch.randn(2, 3, *SIZE)
    assert_exact(model, small, images)
    assert _layout_of(small) == small.layout == torch.contiguous_format
    reads = now[0]
    small(images)
    assert now[0] == reads  # chosen once per shape
    costs.update({torch.channels_last: 1.0, torch.contiguous_format: 3.0})
    assert_exact(model, small, images[:1])
    assert small.layout == torch.channels_last
    with torch.no_grad():
        nchw = small(images)  # back to the first shape's choice, in either input layout
        nhwc = small(images.contiguous(memory_format=torch.channels_last))
    assert small.layout == torch.contiguous_format
    for task, value in nchw.items():
        torch.testing.assert_close(nhwc[task], value, rtol=0, atol=0)


def test_peak_memory_is_measured_in_the_layout_chosen_for_its_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in whichever layout an earlier shape left: batch 2 picks channels-last, batch 1 NCHW."""
    model = make_model()
    small = compact(model)
    costs = {torch.channels_last: 1.0, torch.contiguous_format: 2.0}
    fake_clock(monkeypatch, small, costs)
    small(torch.randn(2, 3, *SIZE))
    assert small.layout == torch.channels_last
    costs.update({torch.channels_last: 2.0, torch.contiguous_format: 1.0})
    peak = measure.peak_activation_mb(small, SIZE, torch.device("cpu"))
    assert small.layout == torch.contiguous_format
    fixed = CompactModel(small.spec, tune_layout=False)
    fixed.load_state_dict(small.state_dict())
    fixed._use(torch.contiguous_format)
    assert peak == measure.peak_activation_mb(fixed, SIZE, torch.device("cpu"))


def test_layout_choice_stays_out_of_counting_and_inference_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FLOP counting (a dispatch mode) runs one forward untimed; a choice made under inference mode leaves
    ordinary weights; ``tune_layout=False`` and a loaded model start channels-last."""
    model = make_model()
    small = compact(model)
    fixed = CompactModel(small.spec, tune_layout=False)
    fixed.load_state_dict(small.state_dict())
    images = torch.randn(1, 3, *SIZE)
    now = fake_clock(monkeypatch, small, {torch.channels_last: 2.0, torch.contiguous_format: 1.0})
    assert measure.count_flops(small, images) == measure.count_flops(fixed, images)
    assert now[0] == 0 and not small._layouts
    with torch.inference_mode():
        small(images)
    assert now[0] > 0 and small.layout == torch.contiguous_format
    assert not any(p.is_inference() for p in small.parameters()) and not any(p.requires_grad for p in small.parameters())
    small.load_state_dict(fixed.state_dict())
    assert_exact(model, small, images)
    fixed(images)
    assert fixed.layout == _layout_of(fixed) == torch.channels_last
    assert _layout_of(load(save(small, tmp_path / "compact.pt"))) == torch.channels_last


def test_saved_compact_model_loads_without_pickled_classes(tmp_path: Path) -> None:
    model = make_model()
    zero_groups(model.backbone.layer3[0].conv2.weight, slice(0, 10))
    small = compact(model)
    path = save(small, tmp_path / "compact.pt")
    stored = torch.load(path, weights_only=True)
    json.dumps(stored["spec"])  # plain data only
    assert set(stored) == {"format", "version", "spec", "state_dict"}
    again = load(path)
    assert_exact(model, again)
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "missing.pt")
    ckpt.save({"model": model.state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(DataError, match="not a compact model"):
        load(tmp_path / "checkpoint.pt")


@pytest.fixture
def trial_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, MultiTaskModel]:
    """A trial folder as training leaves it (config, a sparse ``checkpoint.pt``), and its model; no training.

    Latencies are timed briefly: the tests check the table, not the numbers.
    """
    monkeypatch.setattr(measure, "MIN_RUN_TIME_S", 0.01)
    folder = tmp_path / "runs" / "tiny_trial_0"
    cfg = config.validate(tiny.tiny_raw("tiny", tmp_path / "runs", tmp_path / "data", num_seg_classes=5,
                                        task_list=["segmentsemantic", "depth_euclidean"], test_batch_size=2))
    write_text(folder / "config_file.yaml", config.dump(cfg))
    model = build_trial(cfg, device=torch.device("cpu")).model
    gen = torch.Generator().manual_seed(4)
    for weight in model.backbone.parameters():
        if weight.ndim == 4 and weight.shape[1] > 3:
            zero_groups(weight, torch.rand(weight.shape[1], generator=gen).lt(0.5).nonzero().flatten().tolist())
    ckpt.save({"model": model.state_dict(), "epoch": 1}, folder / "checkpoint.pt")
    return folder, model.eval()


def test_cli_writes_a_compact_model_and_prints_the_table(trial_folder, capsys: pytest.CaptureFixture) -> None:
    folder, model = trial_folder
    assert export.main(["--exp_folder_path", str(folder)]) == 0
    printed = capsys.readouterr().out
    for row in ("parameters", "GFLOPs / image", "peak activations MB", "eager, batch 1", "eager, batch 2", "max |difference|"):
        assert row in printed, row
    assert_exact(model, load(folder / "compact_checkpoint.pt"))


def test_cli_writes_nothing_when_the_outputs_differ(trial_folder, monkeypatch, capsys: pytest.CaptureFixture) -> None:
    folder, _ = trial_folder

    def wrong(model: nn.Module) -> CompactModel:
        small = compact(model)
        with torch.no_grad():
            small.output_layer("depth_euclidean").bias.add_(1.0)
        return small

    monkeypatch.setattr(export, "compact", wrong)
    assert export.main(["--exp_folder_path", str(folder)]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert not (folder / "compact_checkpoint.pt").exists()


@pytest.mark.slow
def test_cli_onnx_export_is_checked_with_onnx_runtime(trial_folder, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, model = trial_folder
    out, onnx_path = tmp_path / "small.pt", tmp_path / "small.onnx"
    assert export.main(["--exp_folder_path", str(folder), "--out", str(out), "--onnx", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert "ONNX Runtime, batch 2" in printed and "ONNX Runtime vs compact model" in printed
    run = export.onnx_runner(onnx_path.read_bytes())
    images = torch.randn(3, 3, *SIZE)  # another batch size than the export's: the batch axis is dynamic
    with torch.no_grad():
        expected = model(images)
    for task, value in zip(expected, run(images)):
        assert float((torch.from_numpy(value) - expected[task]).abs().max()) <= TOLERANCE * float(expected[task].abs().max())


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, trial_folder, capsys: pytest.CaptureFixture) -> None:
    folder, _ = trial_folder
    assert export.main(["--exp_folder_path", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err.strip().splitlines()[-1]
    assert export.main(["--exp_folder_path", str(folder), "--checkpoint", "surface_normal_checkpoint.pt"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "surface_normal_checkpoint.pt" in error[0] and "Traceback" not in error[0]


@pytest.mark.parametrize("flag", ["--out", "--onnx"])
@pytest.mark.parametrize("bad", ["a_folder", "under_a_file"])
def test_cli_unusable_output_paths_are_refused_before_the_work(trial_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture, flag: str, bad: str) -> None:
    folder, _ = trial_folder

    def compacted(model: nn.Module) -> CompactModel:
        raise AssertionError("the model was compacted before the output path was refused")

    monkeypatch.setattr(export, "compact", compacted)
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("")
    target = tmp_path / "taken" if bad == "a_folder" else tmp_path / "file" / "model.out"
    assert export.main(["--exp_folder_path", str(folder), flag, str(target)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and flag in error[0]
    assert str(tmp_path / ("taken" if bad == "a_folder" else "file")) in error[0]
    assert not (folder / "compact_checkpoint.pt").exists()


def test_cli_refuses_a_checkpoint_with_nan_weights(trial_folder, capsys: pytest.CaptureFixture) -> None:
    folder, model = trial_folder
    state = model.state_dict()
    state["backbone.layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    ckpt.save({"model": state, "epoch": 1}, folder / "checkpoint.pt")
    assert export.main(["--exp_folder_path", str(folder)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: checkpoint '{folder / 'checkpoint.pt'}': 'backbone.layer1.0.conv1.weight' holds NaN/Inf "
                     "(a diverged run); expected finite weights to compact"]
    assert not (folder / "compact_checkpoint.pt").exists()


def test_every_batchnorm_is_folded_and_the_sparse_model_is_left_alone() -> None:
    model = make_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    small = compact(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.heads.modules())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert_exact(model, small)
