"""Experiment configuration: the study's YAML keys, typed and validated before anything heavy runs.

Every key of the study's files loads unchanged (including the misspelt ``uncertainity``);
new keys have defaults, so old files keep their meaning. Errors name the key, the value and
what is allowed, in one line, as a :class:`~utils.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from data.celeba_format import CELEBA_ATTRIBUTES, CELEBA_TASK_ALIASES, celeba_attribute
from utils import io, yaml_io
from utils.errors import ConfigError
from utils.logging import wandb_mode

log = logging.getLogger("gsmtl")

DEFAULT_CONFIG = "config/demo_synthetic.yaml"

NYU_TASKS = ("segmentsemantic", "depth_euclidean", "surface_normal", "edge_texture")
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
PosInt = Annotated[int, Strict(), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
PosFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
#: An image side in pixels: 8 K is far beyond any dataset here, and a typo (256000) would exhaust memory.
MAX_IMAGE_SIDE = 8192
Side = Annotated[int, Strict(), Field(gt=0, le=MAX_IMAGE_SIDE)]
#: A seed every generator takes (numpy's and torch's: non-negative, 64-bit).
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**63)]


def _folder_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,199}", value):
        raise ValueError(f"must be a folder name of 1 to 200 letters, digits and ._+=-, not starting with '.', got {value!r}")
    return value


#: A name that becomes a folder's (an experiment's, a study's): portable, not hidden, short enough for its suffixes.
FolderName = Annotated[str, AfterValidator(_folder_name)]
OptimizerName = Literal["adam", "adamw", "sgd"]
BackboneName = Literal[
    "resnetd18", "resnetd34", "resnetd50", "resnetd101",
    "resnet18", "resnet34", "resnet50", "resnet101",
]


class _Section(BaseModel):
    """Unknown keys are errors, numbers must be finite; the study's aliases (``lambda``) load by name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


def none_spelling(value: Any) -> Any:
    """The study's files write ``None`` (a string in YAML 1.1) where they mean no value."""
    return None if isinstance(value, str) and value.strip().lower() in {"none", "null", ""} else value


class OptimizerParams(_Section):
    """``optimizer_params`` (heads) and ``bb_optimizer_params`` (shared backbone).

    ``eps`` left out means the default of the optimizer in use: 1e-6 for the study's AdamW
    under group sparsity, torch's 1e-8 otherwise. ``lambda: None`` (the study's grid-search
    file) means λ comes from a sweep.
    """

    learning_rate: PosFloat = 1e-4
    betas: tuple[Float, Float] = (0.9, 0.999)
    eps: PosFloat | None = None
    weight_decay: NonNegFloat = 0.0
    momentum: NonNegFloat = 0.9
    penalty: Literal["l1_l2", "group_mcp"] | None = "l1_l2"
    lambda_: NonNegFloat | None = Field(0.0, alias="lambda")
    gamma: PosFloat = 3.0
    weighted: Bool = True
    reweight: Bool = True

    @field_validator("penalty", "lambda_", mode="before")
    @classmethod
    def _none_spellings(cls, value: Any) -> Any:
        return none_spelling(value)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for index, beta in enumerate(value):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"beta at index {index} must be in [0, 1), got {beta}")
        return value


@dataclass(frozen=True)
class OptimizerSpec:
    """What ``optim.build`` needs, resolved once: optimizer kinds and rates of heads and backbone.

    Under ``group_sparsity`` with ``group_sparsity_optimizer: adamw`` (the study) the backbone
    gets decoupled AdamW with eps 1e-6 whatever ``bb_optimizer`` says, as the study's code did.
    """

    head_kind: str
    head: OptimizerParams
    backbone_kind: str
    backbone: OptimizerParams
    group_sparsity: bool
    scope: str = "backbone"
    head_lambda: float | None = None


class WandbConfig(_Section):
    """Where runs are logged; offline unless asked otherwise (``WANDB_MODE`` also wins)."""

    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "group-sparse-mtl"
    entity: str | None = None
    dir: str = "."


class SyntheticConfig(_Section):
    """Generate a NYUD_MT-layout dataset into the data folder when it is not there yet."""

    num_images: PosInt = 600
    height: Side = 96
    width: Side = 128
    seed: Seed = 0


#: Keys the study's scripts write into the saved ``config_file.yaml`` that change nothing here:
#: accepted (so the study's trial folders load) and listed once as ignored.
IGNORED_STUDY_KEYS = ("NYU_num_classes", "flag", "es_loss", "best_lambda")
#: The λ values the study's grid search trained when its file says ``lambda: None``.
STUDY_LAMBDA_GRID = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
#: Epsilon of the study's AdamW (proxssi's default) and of torch's Adam.
STUDY_ADAMW_EPS = 1e-6
TORCH_ADAM_EPS = 1e-8


class ExperimentConfig(_Section):
    """One experiment: what to train, on which data, with which optimizer, how many trials.

    Defaults follow what the study's code did where its YAML files are silent (REFERENCE §9);
    where this project keeps a fix, README's "Differences from the study" names the key.
    """

    # The study's keys (REFERENCE §2).
    Experiment_name: FolderName
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
    train_batch_size: Annotated[int, Strict(), Field(ge=2)] = 16  # BatchNorm trains on batch statistics
    val_batch_size: PosInt = 8
    test_batch_size: PosInt = 8
    input_shape: Side | tuple[Side, Side] = 256
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
    meta: Bool = False

    # Keys behind choices the study's code hard-coded; the defaults are the study's.
    lambda_every: PosInt = 10
    group_sparsity_optimizer: Literal["adamw", "bb_optimizer"] = "adamw"
    depth_loss: Literal["mse", "l1"] = "mse"
    depth_normalization: Literal["none", "per_image_max"] = "per_image_max"
    depth_activation: Literal["auto", "none", "sigmoid"] = "auto"
    normals_activation: Literal["none", "tanh"] = "tanh"
    image_normalization: Literal["none", "imagenet"] = "none"
    class_threshold: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.4
    celebA_subset: Literal["first_third", "all"] = "first_third"
    penalty_in_loss: Bool = False

    # Keys this project adds.
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    wandb: WandbConfig = WandbConfig()
    augmentation: Bool = False
    backbone_width: PosFloat = 1.0
    head_channels: PosInt = 256
    pretrained: Bool = False
    max_batches_per_epoch: PosInt | None = None
    loss_weights: dict[str, NonNegFloat] | None = None
    num_seg_classes: PosInt | None = None
    class_balance: Bool = False
    celebA_split_file: str | None = None
    lambda_sweep: list[NonNegFloat] | None = None
    best_lambda_band: tuple[Annotated[float, Strict(), Field(ge=0, le=1)], Annotated[float, Strict(), Field(ge=0, le=1)]] = (0.25, 0.8)
    synthetic: SyntheticConfig | None = None
    log_every: PosInt = 25
    amp: Bool = False
    channels_last: Bool = False
    compile: Bool = False
    cudnn_benchmark: Bool = True
    persistent_workers: Bool = False
    sparsity_scope: Literal["backbone", "backbone+head_inputs"] = "backbone"
    head_lambda: NonNegFloat | None = None
    on_trial_failure: Literal["continue", "stop"] = "continue"
    skip_bad_samples: Bool = False
    lr_schedule: Literal["plateau", "constant"] = "plateau"
    sync_batchnorm: Bool = False
    # Target-sparsity mode: λ becomes a controlled variable (engine.sparsity_schedule).
    target_group_sparsity: Annotated[float, Strict(), Field(gt=0, lt=1)] | None = None
    target_epoch: PosInt | None = None
    freeze_lambda_after_target: Bool = True
    target_update_every: PosInt = 2
    finetune_epochs: NonNegInt = 0
    sparsity_sweep: list[Annotated[float, Strict(), Field(gt=0, lt=1)]] | None = None

    _ignored: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _drop_study_keys(cls, data: Any, handler: Any) -> ExperimentConfig:
        ignored: tuple[str, ...] = ()
        if isinstance(data, dict):
            ignored = tuple(key for key in IGNORED_STUDY_KEYS if key in data)
            data = {key: value for key, value in data.items() if key not in IGNORED_STUDY_KEYS}
        cfg = handler(data)
        if ignored:
            cfg._ignored = ignored
        return cfg

    @field_validator("optimizer", "bb_optimizer", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("input_shape", mode="before")
    @classmethod
    def _image_sides(cls, value: Any) -> Any:
        """One message for both forms (pydantic would report the first member of the union only)."""
        pair = isinstance(value, (list, tuple))
        sides = list(value) if pair else [value]
        if (pair and len(sides) != 2) or not all(type(s) is int and 0 < s <= MAX_IMAGE_SIDE for s in sides):
            raise ValueError(f"expected one side or [height, width], integers from 1 to {MAX_IMAGE_SIDE} (got {value!r})")
        return value

    @field_validator("num_trials")
    @classmethod
    def _at_least_one_trial(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value} (the study's example files say 0; set the trials to train, the study trained 5)")
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
            missing = [task for task in self.task_list if task not in self.loss_weights]
            if missing:
                raise ValueError(f"loss_weights: no weight for {missing}; give one per task of task_list (or leave the key out: wt_sum is then the mean)")
        _check_optimizers(self)
        if self.depth_activation == "sigmoid" and self.depth_normalization == "none":
            raise ValueError("depth_activation: 'sigmoid' bounds depth to (0, 1) but depth_normalization 'none' keeps metres; "
                             "use depth_activation 'auto' or 'none', or depth_normalization 'per_image_max'")
        if (self.target_group_sparsity is not None or self.sparsity_sweep) and not self.group_sparsity:
            raise ValueError("target_group_sparsity / sparsity_sweep: a sparsity target needs group_sparsity: true")
        if self.lambda_sweep and self.sparsity_sweep:
            raise ValueError("lambda_sweep and sparsity_sweep: sweep λ or the sparsity target, not both")
        if self.lambda_sweep and self.lambda_list:
            raise ValueError("lambda_sweep and lambda_list: a λ schedule would override the swept λ; set one of them")
        if self.lambda_sweep and any(lam > 0 for lam in self.lambda_sweep) and self.bb_optimizer_params.penalty is None:
            raise ValueError("lambda_sweep: a λ > 0 trains with group sparsity, which needs bb_optimizer_params.penalty "
                             "'l1_l2' or 'group_mcp', got None")
        if self.finetune_epochs and not self.group_sparsity:
            raise ValueError("finetune_epochs: fine-tuning holds zero groups at zero; it needs group_sparsity: true")
        if self.target_epoch is not None and self.target_epoch > self.epochs:
            raise ValueError(f"target_epoch: {self.target_epoch} is after the last epoch ({self.epochs})")
        low, high = self.best_lambda_band
        if not low < high:
            raise ValueError(f"best_lambda_band: expected [low, high] with low < high, got {list(self.best_lambda_band)}")
        return self

    @property
    def ignored_keys(self) -> tuple[str, ...]:
        """The study's saved-config keys this config held and ignored (:data:`IGNORED_STUDY_KEYS`)."""
        return self._ignored

    @property
    def image_size(self) -> tuple[int, int]:
        """``input_shape`` as (height, width)."""
        shape = self.input_shape
        return (shape, shape) if isinstance(shape, int) else tuple(shape)

    @property
    def depth_output(self) -> str:
        """The depth head's activation: ``auto`` is the study's sigmoid on per-image-max depth, none on metres."""
        if self.depth_activation != "auto":
            return self.depth_activation
        return "sigmoid" if self.depth_normalization == "per_image_max" else "none"

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        """The optimizers of heads and backbone, resolved as the study's code chose them (REFERENCE §9)."""
        study_adamw = self.group_sparsity and self.group_sparsity_optimizer == "adamw"
        bb_kind = "adamw" if study_adamw else self.bb_optimizer
        bb_eps = STUDY_ADAMW_EPS if study_adamw else TORCH_ADAM_EPS
        return OptimizerSpec(
            head_kind=self.optimizer,
            head=_with_eps(self.optimizer_params, TORCH_ADAM_EPS),
            backbone_kind=bb_kind,
            backbone=_with_eps(self.bb_optimizer_params, bb_eps),
            group_sparsity=self.group_sparsity,
            scope=self.sparsity_scope,
            head_lambda=self.head_lambda,
        )

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


def _with_eps(params: OptimizerParams, default: float) -> OptimizerParams:
    return params if params.eps is not None else params.model_copy(update={"eps": default})


def _check_optimizers(cfg: ExperimentConfig) -> None:
    """Combinations ``optim.build`` cannot honour are config errors, found before any work."""
    bb_kind = cfg.optimizer_spec.backbone_kind
    if cfg.group_sparsity:
        if cfg.bb_optimizer_params.penalty is None:
            raise ValueError("bb_optimizer_params.penalty: group_sparsity needs 'l1_l2' or 'group_mcp', got None")
        if bb_kind == "sgd":
            raise ValueError("bb_optimizer: 'sgd' has no proximal step for group_sparsity; expected 'adam' or 'adamw' "
                             "(or group_sparsity_optimizer: adamw, the study's choice)")
        if cfg.bb_optimizer_params.lambda_ is None and not (cfg.lambda_sweep or cfg.target_group_sparsity or cfg.sparsity_sweep):
            raise ValueError("bb_optimizer_params.lambda: None (the study's grid-search file); set a value, "
                             "add lambda_sweep, or run main_gridsearch.py")
    if cfg.head_lambda is not None and cfg.sparsity_scope == "backbone":
        raise ValueError("head_lambda: it sets λ of the heads' input groups, which only sparsity_scope "
                         "'backbone+head_inputs' penalises; expected that scope or no head_lambda")
    if cfg.head_lambda and not (cfg.bb_optimizer_params.lambda_ or cfg.target_group_sparsity or cfg.sparsity_sweep or cfg.lambda_sweep):
        raise ValueError("head_lambda: it is kept as a ratio to the backbone's λ, which is 0 here; "
                         "expected bb_optimizer_params.lambda > 0")
    if (cfg.optimizer == "sgd") != (bb_kind == "sgd"):
        raise ValueError(f"optimizer / bb_optimizer: {cfg.optimizer!r} cannot be mixed with {bb_kind!r}; "
                         "expected both in ('adam', 'adamw') or both 'sgd'")


def _check_task(task: str, dataset: str) -> None:
    if dataset == "NYU":
        if task not in NYU_TASKS:
            raise ValueError(f"task_list: unknown NYU task {task!r}; expected one of {list(NYU_TASKS)}")
    elif task != "segmentsemantic" and celeba_attribute(task) is None:
        raise ValueError(
            f"task_list: unknown celebA task {task!r}; expected 'segmentsemantic', "
            f"{sorted(CELEBA_TASK_ALIASES)} or class_<Attribute> with Attribute in {list(CELEBA_ATTRIBUTES)}"
        )


def check_paths(cfg: ExperimentConfig, *, out_dir: str | Path = "out_csv") -> None:
    """Fail in a second, before torch loads, when the dataset folder is missing and nothing generates it,
    or when a folder the run writes cannot be written: the trial folders (``checkpoint_folder``), the
    tables (``out_dir``), the wandb runs (``wandb.dir``, unless disabled) and a generated dataset."""
    if cfg.synthetic is None and not cfg.data_dir.is_dir():
        raise ConfigError(
            f"config key 'data_dir_{cfg.dataset_name}': folder '{cfg.data_dir}' not found; expected the dataset folder"
        )
    folders = {"config key 'checkpoint_folder'": cfg.checkpoint_folder, "the tables' folder": out_dir}
    if wandb_mode(cfg.wandb.mode) != "disabled":
        folders["config key 'wandb.dir'"] = cfg.wandb.dir
    if cfg.synthetic is not None and not cfg.data_dir.is_dir():
        folders[f"config key 'data_dir_{cfg.dataset_name}' (generated)"] = cfg.data_dir
    for what, folder in folders.items():
        writable_folder(Path(folder).expanduser(), what)
    check_tables(out_dir, [f"{cfg.Experiment_name}.csv", f"{cfg.Experiment_name}_trials.csv"], "the tables' folder")


def check_tables(out_dir: str | Path, names: Iterable[str], what: str) -> None:
    """Raise ConfigError when a table about to be written in ``out_dir`` would replace a folder."""
    for name in names:
        table = Path(out_dir) / name
        if table.is_dir():
            raise ConfigError(f"{what}: '{table}' is a folder; expected the place of a table (move it away)")


def check_trial(cfg: ExperimentConfig, trial: int) -> None:
    """``--trial N`` names one of the experiment's trials."""
    if not 0 <= trial < cfg.num_trials:
        raise ConfigError(f"--trial {trial}: expected 0 <= trial < num_trials = {cfg.num_trials}")


def writable_folder(folder: Path, what: str) -> None:
    """Raise ConfigError unless ``folder`` is, or can be created as, a folder this process can write."""
    problem = io.folder_problem(folder)
    if problem is not None:
        raise ConfigError(f"{what}: '{folder}' cannot be written: {problem}; expected a folder to write into")


def load(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override (``key=value``, dotted for nested keys) and validate an experiment file.

    The study's saved-config keys that mean nothing here are logged once, as ignored.
    """
    path = Path(path)
    raw = yaml_io.read_mapping(path, kind="config", missing=f"config file '{path}' not found; expected a YAML experiment file")
    for override in overrides:
        _apply_override(raw, override)
    cfg = validate(raw, source=str(path))
    if cfg.ignored_keys:
        log.info("%s: ignoring %s (keys the study's scripts wrote; they change nothing here)", path, ", ".join(cfg.ignored_keys))
    return cfg


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
    node[parts[-1]] = yaml_io.parse(text, source=f"--set {key}")


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


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain data (the study's key names), as it is dumped and compared."""
    return cfg.model_dump(mode="json", by_alias=True)


def dump(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that :func:`load` reads back to an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
