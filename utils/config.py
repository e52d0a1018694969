"""Experiment configuration: the study's YAML keys, typed and validated before anything heavy runs.

Every key of the study's files loads unchanged (including the misspelt ``uncertainity``);
new keys have defaults, so old files keep their meaning. Errors name the key, the value and
what is allowed, in one line, as a :class:`~utils.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from utils.errors import ConfigError

DEFAULT_CONFIG = "config/demo_synthetic.yaml"

NYU_TASKS = ("segmentsemantic", "depth_euclidean", "surface_normal", "edge_texture")
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
#: The study's short names for CelebA attributes; any ``class_<Attribute>`` works as well.
CELEBA_TASK_ALIASES = {
    "class_male": "Male",
    "class_smile": "Smiling",
    "class_eyebrows": "Arched_Eyebrows",
    "class_glasses": "Eyeglasses",
}

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PosFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
OptimizerName = Literal["adam", "adamw", "sgd"]
BackboneName = Literal[
    "resnetd18", "resnetd34", "resnetd50", "resnetd101",
    "resnet18", "resnet34", "resnet50", "resnet101",
]


def celeba_attribute(task: str) -> str | None:
    """The CelebA attribute behind a ``class_*`` task name (case-insensitive), or None."""
    if task in CELEBA_TASK_ALIASES:
        return CELEBA_TASK_ALIASES[task]
    if not task.startswith("class_"):
        return None
    wanted = task[len("class_"):].lower()
    return next((name for name in CELEBA_ATTRIBUTES if name.lower() == wanted), None)


class _Section(BaseModel):
    """Unknown keys are errors; the study's aliases (``lambda``) load by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class OptimizerParams(_Section):
    """``optimizer_params`` (heads) and ``bb_optimizer_params`` (shared backbone)."""

    learning_rate: PosFloat = 1e-4
    betas: tuple[Float, Float] = (0.9, 0.999)
    eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.0
    momentum: NonNegFloat = 0.9
    penalty: Literal["l1_l2", "group_mcp"] | None = "l1_l2"
    lambda_: NonNegFloat = Field(0.0, alias="lambda")
    gamma: PosFloat = 3.0
    weighted: Bool = True
    reweight: Bool = True

    @field_validator("penalty", mode="before")
    @classmethod
    def _none_spellings(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.lower() in {"none", "null", ""} else value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for index, beta in enumerate(value):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"beta at index {index} must be in [0, 1), got {beta}")
        return value


class WandbConfig(_Section):
    """Where runs are logged; offline unless asked otherwise (``WANDB_MODE`` also wins)."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "group-sparse-mtl"
    entity: str | None = None
    dir: str = "."


class SyntheticConfig(_Section):
    """Generate a NYUD_MT-layout dataset into the data folder when it is not there yet."""

    num_images: PosInt = 600
    height: PosInt = 96
    width: PosInt = 128
    seed: Int = 0


class ExperimentConfig(_Section):
    """One experiment: what to train, on which data, with which optimizer, how many trials."""

    # The study's keys (REFERENCE §2).
    Experiment_name: str
    dataset_name: Literal["NYU", "celebA"] = "NYU"
    task_list: list[str] = Field(min_length=1)
    setup: Literal["singletask", "multitask"] = "multitask"
    group_sparsity: Bool = False
    sparsity_threshold: NonNegInt = 0
    backbone: BackboneName = "resnetd50"
    checkpoint: Bool = False
    checkpoint_folder: str = "runs"
    num_trials: Int = 1
    wandb_img_log: Bool = False
    comb_loss: Literal["uncertainity", "sum", "wt_sum"] = "uncertainity"
    train_batch_size: PosInt = 16
    val_batch_size: PosInt = 8
    test_batch_size: PosInt = 8
    input_shape: PosInt | tuple[PosInt, PosInt] = 256
    epochs: PosInt = 100
    earlystop_patience: PosInt = 25
    task_earlystop_patience: PosInt = 25
    num_workers: NonNegInt = 2
    input_img_channels: Literal[3] = 3
    num_input_ch: Literal[3] = 3
    seg_loss_fn: Literal["softCEloss", "dice", "Tversky", "Focal"] = "softCEloss"
    optimizer: OptimizerName = "adam"
    optimizer_params: OptimizerParams = OptimizerParams(weight_decay=0.01, penalty=None)
    bb_optimizer: OptimizerName = "adam"
    bb_optimizer_params: OptimizerParams = OptimizerParams(weight_decay=0.1)
    data_dir_NYU: str | None = None
    data_dir_celebA: str | None = None
    lambda_list: list[NonNegFloat] | None = None

    # Keys this project adds; defaults keep the study's meaning.
    seed: Int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    wandb: WandbConfig = WandbConfig()
    augmentation: Bool = False
    depth_normalization: Literal["none", "per_image_max"] = "none"
    backbone_width: PosFloat = 1.0
    head_channels: PosInt = 256
    pretrained: Bool = False
    max_batches_per_epoch: PosInt | None = None
    penalty_in_loss: Bool = False
    loss_weights: dict[str, NonNegFloat] | None = None
    num_seg_classes: PosInt | None = None
    class_threshold: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.5
    class_balance: Bool = False
    celebA_split_file: str | None = None
    lambda_sweep: list[NonNegFloat] | None = None
    synthetic: SyntheticConfig | None = None
    log_every: PosInt = 25
    amp: Bool = False
    channels_last: Bool = False

    @field_validator("optimizer", "bb_optimizer", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("Experiment_name")
    @classmethod
    def _folder_safe(cls, value: str) -> str:
        if not value or not re.fullmatch(r"[A-Za-z0-9._+=-]+", value):
            raise ValueError(f"must be a non-empty folder name of letters, digits and ._+=-, got {value!r}")
        return value

    @field_validator("num_trials")
    @classmethod
    def _at_least_one_trial(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        if len(set(self.task_list)) != len(self.task_list):
            raise ValueError(f"task_list: tasks repeat: {self.task_list}")
        if self.setup == "singletask" and len(self.task_list) != 1:
            raise ValueError(f"task_list: setup 'singletask' needs exactly one task, got {self.task_list}")
        for task in self.task_list:
            _check_task(task, self.dataset_name)
        if self.loss_weights is not None:
            unknown = sorted(set(self.loss_weights) - set(self.task_list))
            if unknown:
                raise ValueError(f"loss_weights: {unknown} are not in task_list {self.task_list}")
        if self.group_sparsity and self.bb_optimizer_params.penalty is None:
            raise ValueError("bb_optimizer_params.penalty: group_sparsity needs 'l1_l2' or 'group_mcp', got None")
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        """``input_shape`` as (height, width)."""
        shape = self.input_shape
        return (shape, shape) if isinstance(shape, int) else tuple(shape)

    @property
    def data_dir(self) -> Path:
        """The dataset root of ``dataset_name``."""
        key = f"data_dir_{self.dataset_name}"
        value = getattr(self, key)
        if value is None:
            raise ConfigError(f"config key '{key}': no dataset folder given; expected a path")
        return Path(value).expanduser()

    @property
    def is_multitask(self) -> bool:
        return self.setup == "multitask"


def _check_task(task: str, dataset: str) -> None:
    if dataset == "NYU":
        if task not in NYU_TASKS:
            raise ValueError(f"task_list: unknown NYU task {task!r}; expected one of {list(NYU_TASKS)}")
    elif task != "segmentsemantic" and celeba_attribute(task) is None:
        raise ValueError(
            f"task_list: unknown celebA task {task!r}; expected 'segmentsemantic', "
            f"{sorted(CELEBA_TASK_ALIASES)} or class_<Attribute> with Attribute in {list(CELEBA_ATTRIBUTES)}"
        )


def check_data_dir(cfg: ExperimentConfig) -> None:
    """Fail in a second, before torch loads, when the dataset folder is missing and nothing generates it."""
    if cfg.synthetic is None and not cfg.data_dir.is_dir():
        raise ConfigError(
            f"config key 'data_dir_{cfg.dataset_name}': folder '{cfg.data_dir}' not found; expected the dataset folder"
        )


class _YamlLoader(yaml.SafeLoader):
    """PyYAML (YAML 1.1) reads ``1e-6`` as a string; the study's files write λ that way."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]*[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$|^[-+]?\.[0-9_]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, *, source: str) -> Any:
    """Parse YAML text, numbers in scientific notation included, or raise ConfigError."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} is not valid YAML ({getattr(error, 'problem', error)})") from None


def load(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override (``key=value``, dotted for nested keys) and validate an experiment file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; expected a YAML experiment file")
    raw = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    for override in overrides:
        _apply_override(raw, override)
    return validate(raw, source=str(path))


def validate(raw: dict[str, Any], *, source: str = "config") -> ExperimentConfig:
    """Validate a mapping of config keys; errors name the key and what it expects."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error.errors()[0])}") from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value (dotted keys for nested ones)")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = parse_yaml(text, source=f"--set {key}")


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(_strip_type_tags([str(part) for part in error["loc"]]))
    if error["type"] == "extra_forbidden":
        hint = _closest(error["loc"])
        return f"unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else "")
    if error["type"] == "missing":
        return f"missing required key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    if not key:
        return message
    got = "" if "got" in message else f" (got {error.get('input')!r})"
    return f"key '{key}': {message}{got}"


def _strip_type_tags(loc: Sequence[str]) -> list[str]:
    """Pydantic puts union member names (``int``, ``tuple[...]``) into locations; drop them."""
    return [part for part in loc if not re.fullmatch(r"(int|float|str|bool|tuple\[.*\]|list\[.*\]|[a-z-]+\[.*\]|constrained-.*)", part)]


def _closest(loc: Sequence[Any]) -> str | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    names = [field.alias or name for name, field in model.model_fields.items()]
    match = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
    return match[0] if match else None


def dump(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that :func:`load` reads back to an equal config."""
    data = cfg.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False)
