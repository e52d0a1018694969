"""Run logging: one wandb run per trial (offline by default) and one console line per epoch."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("gsmtl")


def setup_console(level: int = logging.INFO) -> None:
    """Plain ``HH:MM:SS message`` lines on stderr for the command-line entry points."""
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("wandb", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"val": {"seg": {"mIoU": x}}}`` -> ``{"val/seg/mIoU": x}`` for loggers and tables."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def wandb_mode(requested: str) -> str:
    """The wandb mode a run gets: ``WANDB_MODE`` wins over the config or flag (``requested``)."""
    return os.environ.get("WANDB_MODE") or requested


class RunLogger:
    """A wandb run for one trial; every call is a no-op when wandb is disabled."""

    def __init__(
        self, *, name: str, group: str, config: dict[str, Any], mode: str, project: str,
        entity: str | None, directory: str | Path, resume_id: str | None = None, enabled: bool = True,
    ) -> None:
        self._run = None
        mode = wandb_mode(mode)
        if mode == "disabled" or not enabled:  # enabled=False: not the process that logs (torchrun rank > 0)
            return
        import wandb

        Path(directory).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project, entity=entity, name=name, group=group, config=config, mode=mode,
            dir=str(directory), id=resume_id, resume="allow" if resume_id else None,
            reinit="finish_previous", settings=wandb.Settings(console="off", silent=True),
        )

    @property
    def run_id(self) -> str | None:
        return None if self._run is None else self._run.id

    def log(self, metrics: Mapping[str, Any], *, step: int) -> None:
        """Log a nested dict of numbers at ``step`` (the epoch)."""
        if self._run is not None:
            self._run.log(flatten(metrics), step=step)

    def log_image(self, key: str, path: str | Path, *, caption: str = "") -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path), caption=caption)})

    def log_array(self, key: str, image: Any, *, step: int | None = None, caption: str = "") -> None:
        """Log an H x W x 3 uint8 array (e.g. ``utils.visualize.prediction_panel``) as an image."""
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(image, caption=caption)}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(flatten(values))

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
