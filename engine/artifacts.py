"""The trial folder: its layout, which checkpoint tests which task, finding trials, and reading them back.

One owner for every file a trial leaves (the study's layout, REFERENCE §1): ``config_file.yaml``,
``checkpoint.pt`` (best validation total), ``<task>_checkpoint.pt`` (best per task, multitask),
``last.pt`` (the full state for resume; this module owns its format), the history JSONs,
``test_dict.json`` and ``sparsity_layers.csv``. Folders the study's own code wrote are read
too: their config dumps through :func:`utils.config.load`, their checkpoints (which pickle an
optimizer object) through :func:`utils.checkpoint.load_untrusted` and
:func:`models.study.convert`, never by running the pickle.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from models import study
from utils import checkpoint as ckpt
from utils import config, yaml_io
from utils.config import ExperimentConfig
from utils.errors import ConfigError, DataError
from utils.io import read_json, remove_stale_temps, write_json, write_text
from utils.logging import flatten

log = logging.getLogger("gsmtl")

CONFIG_FILE = "config_file.yaml"
TEST_FILE = "test_dict.json"
GLOBAL_CHECKPOINT = "checkpoint.pt"
LAST_CHECKPOINT = "last.pt"
HISTORY_FILES = ("training_dict.json", "validation_dict.json")
LAYER_TABLE = "sparsity_layers.csv"
FAILURE_FILE = "failed.json"

#: Keys that change how a run is executed, not what it computes: a finished trial is reused and
#: an interrupted one resumed (``checkpoint: true``) across changes of these (and, to resume, of
#: ``epochs``, so a run can be extended).
RUN_CONTROL_KEYS = frozenset({"checkpoint", "wandb", "num_workers", "device", "log_every", "num_trials"})
#: What a resume may change besides: ``epochs`` (a run can be extended).
RESUME_KEYS = RUN_CONTROL_KEYS | {"epochs"}
#: The parts of ``last.pt``, in the order the trainer writes them.
LAST_PARTS = ("epoch", "model", "weighting", "optimizer", "scheduler", "stopping", "sparsity", "history", "rng", "wandb_id")


def trial_folder(cfg: ExperimentConfig, trial: int) -> Path:
    """``<checkpoint_folder>/<Experiment_name>_trial_<i>``."""
    return Path(cfg.checkpoint_folder) / f"{cfg.Experiment_name}_trial_{trial}"


def task_checkpoint(task: str) -> str:
    """File name of a task's best weights in a multitask trial."""
    return f"{task}_checkpoint.pt"


# ----------------------------------------------------------------------------- reuse and resume
def stored_config(folder: Path) -> ExperimentConfig | None:
    """The config a folder was written with, or None (no file, or one that no longer validates)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return config.load(path)
    except ConfigError as error:
        log.warning("%s: %s; the folder is not reused", path, error)
        return None


def changed_keys(stored: ExperimentConfig, current: ExperimentConfig, *, ignore: Iterable[str] = RUN_CONTROL_KEYS) -> list[str]:
    """The keys (dotted when nested) in which two validated configs differ, outside the top-level keys
    ``ignore``, as ``key: old -> new``."""
    skip = set(ignore)
    a, b = flatten(config.to_dict(stored), sep="."), flatten(config.to_dict(current), sep=".")
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in dict.fromkeys([*a, *b])
            if key.split(".")[0] not in skip and a.get(key) != b.get(key)]


def describe_changes(changes: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` of :func:`changed_keys`' lines, and how many more."""
    more = f" and {len(changes) - shown} more" if len(changes) > shown else ""
    return "; ".join(changes[:shown]) + more


def same_run(stored: ExperimentConfig | None, current: ExperimentConfig, *, ignore: Iterable[str]) -> bool:
    """Whether two validated configs compute the same trial, up to the keys in ``ignore``."""
    return stored is not None and not changed_keys(stored, current, ignore=ignore)


class Holding(NamedTuple):
    """What a trial folder holds, measured against the config about to train there. Read once per
    run, so a config file that no longer validates is reported once."""

    stored: ExperimentConfig | None  # the folder's config; None: no file, or one that no longer validates
    results: bool  # test_dict.json exists
    last: bool  # last.pt exists
    finished: bool  # test results of this config, up to RUN_CONTROL_KEYS
    resumable: bool  # a last.pt of this config, up to RESUME_KEYS (``checkpoint: true`` resumes it)
    failure: str | None  # why the run there diverged, or None


def holding(folder: Path, cfg: ExperimentConfig) -> Holding:
    """Read what ``folder`` holds for ``cfg``."""
    stored = stored_config(folder)
    results, last = (folder / TEST_FILE).is_file(), (folder / LAST_CHECKPOINT).is_file()
    return Holding(stored=stored, results=results, last=last,
                   finished=results and same_run(stored, cfg, ignore=RUN_CONTROL_KEYS),
                   resumable=last and same_run(stored, cfg, ignore=RESUME_KEYS), failure=failure(folder))


def is_finished(folder: Path, cfg: ExperimentConfig) -> bool:
    """A trial of this config finished here (its test results exist)."""
    return (folder / TEST_FILE).is_file() and same_run(stored_config(folder), cfg, ignore=RUN_CONTROL_KEYS)


def open_folder(folder: Path, cfg: ExperimentConfig, *, resume: bool) -> None:
    """Make the folder ready for a run: stale temp files removed, old artefacts cleared unless resuming, config written."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"trial folder '{folder}' is a file; expected a folder (check checkpoint_folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(folder)
        if stale:
            log.info("%s: removed %d temporary file(s) an interrupted save left", folder, len(stale))
        (folder / FAILURE_FILE).unlink(missing_ok=True)
        if not resume:
            for name in (GLOBAL_CHECKPOINT, LAST_CHECKPOINT, TEST_FILE, LAYER_TABLE, *HISTORY_FILES,
                         *(task_checkpoint(t) for t in cfg.task_list)):
                (folder / name).unlink(missing_ok=True)
        write_text(folder / CONFIG_FILE, config.dump(cfg))
    except PermissionError as error:
        raise DataError(f"trial folder '{folder}' is not writable ({error.strerror}); check checkpoint_folder") from None
    except OSError as error:  # e.g. a folder where one of its files belongs
        raise DataError(f"trial folder '{folder}': cannot prepare '{error.filename}' ({error.strerror}); "
                        "expected the files a trial writes (delete the folder to train anew)") from None


def mark_failed(folder: Path, reason: str) -> None:
    """Record why a trial failed (a diverged run); the folder keeps its last good checkpoints."""
    remove_stale_temps(folder)
    write_json(folder / FAILURE_FILE, {"status": "failed", "reason": reason})


def failure(folder: Path) -> str | None:
    """Why the trial in ``folder`` failed, or None."""
    path = folder / FAILURE_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        raise DataError(f"'{path}' holds a {type(record).__name__}; expected the record of a failed trial, "
                        "{\"status\": \"failed\", \"reason\": ...} (delete it to train the trial again)")
    return str(record.get("reason", "failed"))


def read_result(folder: Path) -> dict[str, Any]:
    """A finished trial's ``test_dict.json``, checked to be what :func:`engine.trials.run_trial` writes."""
    path = folder / TEST_FILE
    result = read_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("tasks"), dict):
        raise DataError(f"'{path}' is not a trial's test results (expected a mapping with 'tasks'); "
                        "delete it to test the trial again")
    return result


# ----------------------------------------------------------------------------- last.pt
def save_last(folder: Path, state: Mapping[str, Any]) -> None:
    """Write ``last.pt``: exactly the parts of :data:`LAST_PARTS`."""
    missing = [part for part in LAST_PARTS if part not in state]
    if missing:
        raise ValueError(f"last.pt needs {missing}")
    ckpt.save({part: state[part] for part in LAST_PARTS}, folder / LAST_CHECKPOINT)


def load_last(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read ``last.pt``; a file of another format is a DataError naming it."""
    state = ckpt.load(folder / LAST_CHECKPOINT, map_location=device)
    missing = [part for part in LAST_PARTS if part not in state]
    if missing:
        raise DataError(f"'{folder / LAST_CHECKPOINT}' lacks {missing}; it was written by another version (delete it to train anew)")
    wrong = [part for part in ("model", "optimizer", "scheduler", "weighting", "stopping", "sparsity", "history")
             if not isinstance(state[part], dict)]
    wrong += [] if isinstance(state["rng"], dict | list) else ["rng"]  # a list: one state per rank (torchrun)
    if wrong or not isinstance(state["epoch"], int):
        raise DataError(f"'{folder / LAST_CHECKPOINT}': {wrong or ['epoch']} are not what a trial saves; "
                        "delete it to train anew")
    return state


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_plan(cfg: ExperimentConfig, folder: Path, *, per_task: bool = True) -> dict[str, list[str]]:
    """Which checkpoint file tests which tasks: a task's own best if it has one (multitask), else the global best."""
    if not (folder / GLOBAL_CHECKPOINT).is_file():
        raise DataError(f"trial folder '{folder}' has no {GLOBAL_CHECKPOINT}; was the trial trained?")
    plan: dict[str, list[str]] = {}
    for task in cfg.task_list:
        own = task_checkpoint(task)
        name = own if per_task and cfg.is_multitask and (folder / own).is_file() else GLOBAL_CHECKPOINT
        plan.setdefault(name, []).append(task)
    return plan


def read_weights(folder: Path, name: str, cfg: ExperimentConfig, *, device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], int]:
    """A checkpoint's model state_dict (in this project's layout) and its epoch.

    Our checkpoints load with ``weights_only=True``; the study's (which pickle an optimizer)
    are read without running their pickle and converted (:mod:`models.study`).
    """
    path = folder / name
    foreign = ckpt.is_foreign(path)
    state = ckpt.load_untrusted(path) if foreign else ckpt.load(path, map_location=device)
    weights = state.get("model")
    if not isinstance(weights, Mapping) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise DataError(f"checkpoint '{path}' has no 'model' state_dict of tensors")
    if study.is_study_layout(weights):
        weights = study.convert(weights, cfg)
    elif foreign:
        raise DataError(f"checkpoint '{path}' pickles objects weights_only refuses and is not the study's layout; not loaded")
    epoch = state.get("epoch", -1)
    return {key: value.to(device) for key, value in weights.items()}, int(epoch) if isinstance(epoch, int) else -1


def load_weights(model: nn.Module, weights: Mapping[str, Tensor], *, source: Path) -> None:
    """``model.load_state_dict`` with one line naming the first missing, unexpected or misshaped key."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        what = f"lacks '{missing[0]}'" if missing else f"has '{unexpected[0]}', which the model has not"
        raise DataError(f"checkpoint '{source}' does not fit the model its config describes: it {what} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    for key, tensor in weights.items():
        if tensor.shape != expected[key].shape:
            raise DataError(f"checkpoint '{source}': key '{key}' has shape {tuple(tensor.shape)}, "
                            f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(weights)


def offline_config(folder: Path) -> ExperimentConfig:
    """A trial folder's config, resolved without its data when needed (plots, exports of folders whose data is elsewhere).

    Our folders store ``num_seg_classes``; for the study's, it is read off the checkpoint's
    segmentation head, or from the data when the head says nothing.
    """
    from engine.trial import resolve

    cfg = load_trial_config(folder, device="cpu")
    if cfg.num_seg_classes is not None:
        return cfg
    classes = checkpoint_classes(folder, cfg)
    return resolve(cfg) if classes is None else cfg.model_copy(update={"num_seg_classes": classes})


def checkpoint_classes(folder: Path, cfg: ExperimentConfig) -> int | None:
    """The segmentation classes the global checkpoint's head predicts (for folders whose data is elsewhere)."""
    if "segmentsemantic" not in cfg.task_list:
        return None
    path = folder / GLOBAL_CHECKPOINT
    state = ckpt.load_untrusted(path) if ckpt.is_foreign(path) else ckpt.load(path)
    weights = state.get("model", {})
    prefix = "decoders.segmentsemantic." if study.is_study_layout(weights) else "heads.segmentsemantic."
    if not cfg.is_multitask and study.is_study_layout(weights):
        prefix = "decoders."
    convs = [key for key, value in weights.items() if key.startswith(prefix) and key.endswith(".weight")
             and getattr(value, "ndim", 0) == 4 and key[len(prefix):].split(".")[0].isdigit()]
    if not convs:
        return None
    outputs = int(weights[max(convs, key=lambda key: int(key[len(prefix):].split(".")[0]))].shape[0])
    return outputs - 1 if prefix.startswith("decoders") and cfg.dataset_name == "NYU" else outputs


# ----------------------------------------------------------------------------- finding trials
def default_runs_dirs(config_dir: str | Path = "config") -> list[Path]:
    """``runs/`` and the ``checkpoint_folder`` of every YAML file under ``config_dir``, those that exist."""
    folders = [Path("runs")]
    for path in sorted(Path(config_dir).glob("*.y*ml")):
        try:
            raw = yaml_io.read(path)
        except ConfigError:
            continue
        folder = raw.get("checkpoint_folder") if isinstance(raw, dict) else None
        if isinstance(folder, str) and folder:
            folders.append(Path(folder).expanduser())
    unique = list(dict.fromkeys(folder.resolve() for folder in folders))
    return [folder for folder in unique if folder.is_dir()]


def find_trials(exp_name: str, *, runs_dirs: Sequence[str | Path], num_trials: int | None = None) -> dict[int, Path]:
    """The trial folders of an experiment by trial index, trial 0 first.

    ``exp_name`` is taken as typed, trailing underscores included: folders ``<name>_trial_<i>``
    and ``<name>trial_<i>`` are found (``8_2_multi_seg_sn_depth_`` finds
    ``8_2_multi_seg_sn_depth_trial_0``; ``11_1_multi_male_smile_1e5__`` finds
    ``11_1_multi_male_smile_1e5___trial_0``), in each runs folder and one level below it (the
    study kept NYU and CelebA runs apart). A path in ``exp_name`` searches its parent only. A
    folder named exactly ``<name>`` that holds a config (the study's grid-search folders) is
    trial 0 when nothing else matches. ``num_trials`` asks for trials 0 … n-1; by default all.
    """
    if num_trials is not None and num_trials < 1:
        raise ConfigError(f"--num_trials {num_trials}: expected at least 1 (or leave it out for every trial found)")
    given = Path(exp_name)
    name = given.name
    if given.parent == Path("."):
        for root in map(Path, runs_dirs):  # the defaults are existing folders; a given one must be too
            if not root.is_dir():
                what = "is not a folder" if root.exists() else "folder not found"
                raise DataError(f"--runs_dir '{root}': {what}; expected the folder holding the trial folders")
    roots = [given.parent] if given.parent != Path(".") else [Path(d) for d in runs_dirs]
    roots = [root for root in roots if root.is_dir()]
    if not roots:
        searched = ", ".join(str(d) for d in ([given.parent] if given.parent != Path(".") else runs_dirs)) or "none"
        raise DataError(f"no runs folder found (searched: {searched}); pass --runs_dir with the folder holding the trial folders")
    pattern = re.compile(rf"{re.escape(name)}_?trial_(\d+)")
    found: dict[int, list[Path]] = {}
    exact: list[Path] = []
    for folder in (f for root in roots for f in _candidates(root)):
        match = pattern.fullmatch(folder.name)
        if match:
            found.setdefault(int(match.group(1)), []).append(folder)
        elif folder.name == name and (folder / CONFIG_FILE).is_file():
            exact.append(folder)
    if not found and exact:
        found = {0: exact}
    found = {index: _distinct(folders) for index, folders in found.items()}
    where = ", ".join(str(r) for r in roots)
    if not found:
        raise DataError(f"no trial folders '{name}_trial_<i>' or '{name}trial_<i>' in {where} or their sub-folders; "
                        "check --exp_name and --runs_dir")
    wanted = sorted(found) if num_trials is None else range(num_trials)
    # Counted, not listed: a huge --num_trials must not loop (len() of such a range overflows, too).
    missing = (len(found) if num_trials is None else num_trials) - sum(1 for i in found if i in wanted)
    if missing:
        first = list(itertools.islice((i for i in wanted if i not in found), 10))
        shown = f"trial(s) {first}" if missing <= len(first) else f"{missing} trials (the first {first})"
        raise DataError(f"{shown} of '{name}' not found in {where} (found trials {sorted(found)}); "
                        "lower --num_trials or train them")
    for index in wanted:
        if len(found[index]) > 1:
            raise DataError(f"trial {index} of '{name}' is in several folders {[str(f) for f in found[index]]}; "
                            "pass --runs_dir (or a path in --exp_name) to pick one")
    return {i: found[i][0] for i in wanted}


def _distinct(folders: Sequence[Path]) -> list[Path]:
    """One path per folder, the first found: a folder reached twice (``runs/`` searched one level deep
    and ``runs/NYU``, a config's ``checkpoint_folder``; a symlink) counts once."""
    kept: dict[Path, Path] = {}
    for folder in folders:
        kept.setdefault(folder.resolve(), folder)
    return list(kept.values())


def _candidates(root: Path) -> list[Path]:
    """Sub-folders of ``root`` and of its sub-folders, sorted for a stable order."""
    try:
        children = sorted(path for path in root.iterdir() if path.is_dir())
    except PermissionError:
        raise DataError(f"runs folder '{root}' cannot be read; expected a folder holding the trial folders "
                        "(fix its permissions or pass another --runs_dir)") from None
    grandchildren = sorted(path for child in children for path in _subfolders(child))
    return children + grandchildren


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [path for path in folder.iterdir() if path.is_dir()]
    except PermissionError:
        return []


def load_trial_config(folder: Path, *, data_dir: str | Path | None = None, device: str | None = None) -> ExperimentConfig:
    """The config a trial was trained with (ours or the study's dump); ``data_dir`` and ``device`` replace the stored ones.

    ``synthetic`` is switched off: evaluation must read the data that was trained on, never
    generate a new set where the stored path points.
    """
    if not (folder / CONFIG_FILE).is_file():
        raise DataError(f"'{folder}' holds no {CONFIG_FILE}; expected a trial folder written by main_multi_trials.py")
    cfg = config.load(folder / CONFIG_FILE)
    update: dict[str, Any] = {"synthetic": None}
    if data_dir is not None:
        update[f"data_dir_{cfg.dataset_name}"] = str(data_dir)
    if device is not None:
        update["device"] = device
    return config.validate({**config.to_dict(cfg), **update}, source=str(folder / CONFIG_FILE))
