"""Task registry: config -> tasks in order, head specs, unknown names, metric direction tables."""

import pytest
import torch

import tasks
from tasks.attribute import AttributeTask
from tasks.segmentation import SegmentationTask
from utils.config import validate
from utils.errors import ConfigError

NYU = ["segmentsemantic", "depth_euclidean", "surface_normal", "edge_texture"]
CELEBA = ["segmentsemantic", "class_male", "class_smile", "class_Young"]


def _cfg(**keys):
    classes = {"num_seg_classes": 3 if keys.get("dataset_name") == "celebA" else 40}
    return validate({"Experiment_name": "t", "task_list": NYU, **classes, **keys})


def test_build_keeps_task_list_order_and_head_specs():
    built = tasks.build(_cfg(task_list=list(reversed(NYU))))
    assert list(built) == list(reversed(NYU))
    specs = {name: (task.head_kind, task.out_channels) for name, task in built.items()}
    assert specs == {"segmentsemantic": ("dense", 40), "depth_euclidean": ("dense", 1),
                     "surface_normal": ("dense", 3), "edge_texture": ("dense", 1)}


def test_segmentation_classes_follow_the_resolved_config():
    assert tasks.build(_cfg(dataset_name="celebA", task_list=CELEBA))["segmentsemantic"].out_channels == 3
    assert tasks.build(_cfg(num_seg_classes=13))["segmentsemantic"].out_channels == 13
    with pytest.raises(ConfigError, match="num_seg_classes"):
        tasks.build(validate({"Experiment_name": "t", "task_list": NYU}))  # the engine resolves it from the data first


def test_task_kinds_answer_without_building():
    assert tasks.primary_metrics(["segmentsemantic", "class_male"]) == {"segmentsemantic": "mIoU", "class_male": "f1_weighted"}
    assert tasks.directions(["depth_euclidean"])["depth_euclidean"]["abs_err"] is False
    assert tasks.kind("class_Young") is AttributeTask


def test_delta_m_counts_each_standard_metric_once():
    """The study's per-image-max depth errors equal the plain ones on normalised depth: never counted twice."""
    nyu = tasks.directions(NYU)
    assert nyu["depth_euclidean"] == {"abs_err": False, "rel_err": False}
    assert set(nyu["segmentsemantic"]) == {"mIoU", "pixel_acc"}
    assert set(nyu["surface_normal"]) == {"mean", "median", "within_11.25", "within_22.5", "within_30"}
    for name in [*NYU, *CELEBA]:
        kind = tasks.kind(name)
        assert kind.primary_metric in kind.delta_m_metrics
        assert set(kind.delta_m_metrics) <= set(kind.higher_is_better)


@pytest.mark.parametrize("loss_name", ["softCEloss", "dice", "Tversky", "Focal"])
def test_seg_loss_fn_is_used(loss_name):
    task = tasks.build(_cfg(seg_loss_fn=loss_name))["segmentsemantic"]
    assert isinstance(task, SegmentationTask) and task.loss_name == loss_name
    with pytest.raises(ConfigError, match="seg_loss_fn"):
        SegmentationTask("segmentsemantic", 3, loss_name="lovasz")


def test_attribute_tasks_take_threshold_and_positive_rates():
    cfg = _cfg(dataset_name="celebA", task_list=CELEBA, class_threshold=0.4, class_balance=True)
    built = tasks.build(cfg, positive_rates={"class_male": 0.25, "class_smile": 0.5, "class_Young": 0.8})
    male = built["class_male"]
    assert isinstance(male, AttributeTask)
    assert (male.head_kind, male.out_channels, male.threshold) == ("classification", 1, 0.4)
    assert male.pos_weight == pytest.approx(3.0) and built["class_Young"].pos_weight == pytest.approx(0.25)
    assert tasks.build(_cfg(dataset_name="celebA", task_list=CELEBA))["class_male"].pos_weight is None


def test_unknown_task_lists_valid_names():
    cfg = _cfg().model_copy(update={"task_list": ["keypoints"]})
    with pytest.raises(ConfigError, match="segmentsemantic"):
        tasks.build(cfg)
    with pytest.raises(ConfigError, match="class_nothing"):
        tasks.build(_cfg().model_copy(update={"task_list": ["class_nothing"]}))


def test_names_cover_dense_tasks_and_study_aliases():
    assert set(tasks.names()) == {*NYU, "class_male", "class_smile", "class_eyebrows", "class_glasses"}


def _sample(task):
    """A batch of random outputs and targets in the contract's shapes."""
    g = torch.Generator().manual_seed(0)
    if task.head_kind == "classification":
        return torch.randn(6, generator=g), (torch.rand(6, generator=g) < 0.5).float()
    pred = torch.randn(2, task.out_channels, 4, 4, generator=g)
    if isinstance(task, SegmentationTask):
        return pred, torch.randint(0, task.out_channels, (2, 4, 4), generator=g)
    return pred, torch.rand(2, task.out_channels, 4, 4, generator=g) + 0.1


@pytest.mark.parametrize("name", [*NYU, "class_male"])
def test_direction_table_covers_every_metric_key(name):
    cfg = _cfg(dataset_name="celebA", task_list=[name]) if name.startswith("class_") else _cfg(task_list=[name])
    task = tasks.build(cfg)[name]
    metric = task.metric()
    metric.update(*_sample(task))
    computed = metric.compute()
    assert set(computed) == set(task.higher_is_better)
    assert task.primary_metric in computed
    assert all(value.dim() == 0 for value in computed.values())
    assert task.loss(*_sample(task)).dim() == 0
