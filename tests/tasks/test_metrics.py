"""Task metrics against independent numpy computations; accumulation and merging equal one big update."""

import numpy as np
import pytest
import torch

from tasks.attribute import AttributeMetric
from tasks.depth import DepthMetric
from tasks.edge import EdgeMetric
from tasks.normals import NormalsMetric
from tasks.segmentation import SegmentationMetric

C = 5


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _values(metric) -> dict[str, float]:
    return {key: float(value) for key, value in metric.compute().items()}


def _assert_same(got: dict[str, float], expected: dict[str, float], tol: float = 1e-9) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=tol, abs=tol), key


def _check_accumulation(make_metric, pred, target, splits=(1, 3)) -> None:
    """Updates in parts, and parts merged across metric objects (as a distributed sync does), equal one update."""
    whole = make_metric()
    whole.update(pred, target)
    parts = make_metric()
    for p, t in zip(pred.tensor_split(splits), target.tensor_split(splits)):
        parts.update(p, t)
    _assert_same(_values(parts), _values(whole), tol=1e-6)
    first, second = make_metric(), make_metric()
    first.update(pred[: splits[0]], target[: splits[0]])
    second.update(pred[splits[0]:], target[splits[0]:])
    first.merge_state(second)
    _assert_same(_values(first), _values(whole), tol=1e-6)


# --- segmentation -------------------------------------------------------------------------------

def _segmentation_data():
    g = _generator()
    logits = torch.randn(4, C, 7, 6, generator=g)
    logits[:, C - 1] = -100.0  # class C-1 never predicted ...
    target = torch.randint(0, C - 1, (4, 7, 6), generator=g)  # ... nor labelled: it must not count
    target[torch.rand(4, 7, 6, generator=g) < 0.2] = 255
    target[2] = 255  # an image without labelled pixels
    return logits, target


def _segmentation_reference(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    labels, t = logits.argmax(1).numpy(), target.numpy()
    valid = t != 255

    def confusion(mask):
        matrix = np.zeros((C, C))
        np.add.at(matrix, (t[mask], labels[mask]), 1)
        return matrix

    total = confusion(valid)
    inter = np.diag(total)
    union = total.sum(0) + total.sum(1) - inter
    present = union > 0
    per_image = []
    for i in range(t.shape[0]):
        if valid[i].any():
            mask = np.zeros_like(valid)
            mask[i] = valid[i]
            m = confusion(mask)
            per_image.append(np.trace(m) / (m.sum(0) + m.sum(1) - np.diag(m)).sum())
    return {
        "mIoU": float((inter[present] / union[present]).mean()),
        "pixel_acc": float(inter.sum() / total.sum()),
        "mIoU_imagewise": float(np.mean(per_image)),
    }


def test_segmentation_metric_matches_numpy():
    logits, target = _segmentation_data()
    metric = SegmentationMetric(C)
    metric.update(logits, target)
    _assert_same(_values(metric), _segmentation_reference(logits, target))


def test_segmentation_metric_accumulates():
    logits, target = _segmentation_data()
    _check_accumulation(lambda: SegmentationMetric(C), logits, target)


# --- depth --------------------------------------------------------------------------------------

def _depth_data():
    g = _generator(1)
    pred = torch.rand(4, 1, 6, 5, generator=g) * 4
    target = torch.rand(4, 1, 6, 5, generator=g) * 4 + 0.1
    target[torch.rand(4, 1, 6, 5, generator=g) < 0.25] = 0.0
    return pred, target


def test_depth_metric_matches_numpy():
    pred, target = _depth_data()
    p, g = pred.double().numpy(), target.double().numpy()
    image_max = g.max(axis=(1, 2, 3), keepdims=True)
    valid = g > 0
    error, norm_error = (p - g)[valid], ((p - g) / image_max)[valid]
    expected = {
        "abs_err": np.abs(error).mean(),
        "rel_err": (np.abs(error) / g[valid]).mean(),
        "rmse": np.sqrt((error**2).mean()),
        "abs_err_norm": np.abs(norm_error).mean(),
        "rmse_norm": np.sqrt((norm_error**2).mean()),
    }
    metric = DepthMetric()
    metric.update(pred, target)
    _assert_same(_values(metric), expected, tol=1e-6)


def test_depth_metric_accumulates():
    _check_accumulation(DepthMetric, *_depth_data())


# --- normals ------------------------------------------------------------------------------------

def _normals_data():
    g = _generator(2)
    target = torch.nn.functional.normalize(torch.randn(3, 3, 10, 9, generator=g), dim=1)
    pred = target + 0.6 * torch.randn(3, 3, 10, 9, generator=g)  # spread of angles over 0..90+ degrees
    target = target.masked_fill(torch.rand(3, 1, 10, 9, generator=g) < 0.2, 0.0)
    return pred, target


def test_normals_metric_matches_numpy():
    pred, target = _normals_data()
    p = pred.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    t = target.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    valid = np.any(t != 0, axis=1)
    p, t = p[valid], t[valid]
    cosine = np.clip((p * t).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(t, axis=1), -1, 1)
    angle = np.degrees(np.arccos(cosine))
    expected = {
        "mean": angle.mean(), "rmse": np.sqrt((angle**2).mean()), "cos_sim": cosine.mean(),
        **{f"within_{th:g}": 100 * (angle < th).mean() for th in (11.25, 22.5, 30, 45)},
    }
    metric = NormalsMetric()
    metric.update(pred, target)
    got = _values(metric)
    assert got.pop("median") == pytest.approx(np.median(angle), abs=0.006)
    _assert_same(got, expected, tol=1e-5)


def test_normals_metric_accumulates():
    _check_accumulation(NormalsMetric, *_normals_data(), splits=(1, 2))


# --- edge ---------------------------------------------------------------------------------------

def test_edge_metric_matches_numpy_and_accumulates():
    g = _generator(3)
    pred, target = torch.rand(4, 1, 5, 5, generator=g), torch.rand(4, 1, 5, 5, generator=g)
    metric = EdgeMetric()
    metric.update(pred, target)
    _assert_same(_values(metric), {"abs_err": np.abs((pred - target).double().numpy()).mean()}, tol=1e-6)
    _check_accumulation(EdgeMetric, pred, target)


# --- attributes ---------------------------------------------------------------------------------

def _attribute_data():
    g = _generator(4)
    logits = torch.round(torch.randn(40, generator=g) * 2) / 2  # coarse values: ties for the AUROC
    labels = (torch.rand(40, generator=g) < 0.3).float()
    return logits, labels


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's f1_score(average="weighted"), written from precision and recall."""
    total, score = 0.0, 0.0
    for cls in np.union1d(y_true, y_pred):
        tp = np.sum((y_pred == cls) & (y_true == cls))
        predicted, support = np.sum(y_pred == cls), np.sum(y_true == cls)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        score += f1 * support
        total += support
    return score / total


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a positive outscores a negative, ties counted half (Mann-Whitney U)."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


@pytest.mark.parametrize("threshold", [0.4, 0.5])
def test_attribute_metric_matches_reference_formulas(threshold):
    logits, labels = _attribute_data()
    y_true = labels.numpy().astype(int)
    y_pred = (1 / (1 + np.exp(-logits.double().numpy())) > threshold).astype(int)
    metric = AttributeMetric(threshold)
    metric.update(logits, labels)
    expected = {
        "accuracy": float((y_true == y_pred).mean()),
        "f1_weighted": _weighted_f1(y_true, y_pred),
        "auroc": _auroc(logits.numpy(), y_true),
    }
    _assert_same(_values(metric), expected, tol=1e-6)


def test_weighted_f1_with_one_class_predicted():
    labels = torch.tensor([1.0, 1.0, 0.0, 1.0])
    metric = AttributeMetric()
    metric.update(torch.full((4,), 3.0), labels)  # everything predicted positive
    assert float(metric.compute()["f1_weighted"]) == pytest.approx(_weighted_f1(np.array([1, 1, 0, 1]), np.ones(4)))


def test_attribute_metric_accumulates():
    _check_accumulation(AttributeMetric, *_attribute_data(), splits=(13, 30))


def test_auroc_is_nan_when_a_class_is_missing():
    metric = AttributeMetric()
    metric.update(torch.randn(5), torch.ones(5))
    assert torch.isnan(metric.compute()["auroc"])


# --- device -------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_updates_do_not_sync_host_and_device():
    device = torch.device("cuda")
    cases = [
        (SegmentationMetric(C), _segmentation_data()),
        (DepthMetric(), _depth_data()),
        (NormalsMetric(), _normals_data()),
        (AttributeMetric(), _attribute_data()),
    ]
    for metric, (pred, target) in cases:
        metric = metric.to(device)
        pred, target = pred.to(device), target.to(device)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            metric.update(pred, target)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        cpu_metric = type(metric)(C) if isinstance(metric, SegmentationMetric) else type(metric)()
        cpu_metric.update(pred.cpu(), target.cpu())
        _assert_same(_values(metric), _values(cpu_metric), tol=1e-5)
