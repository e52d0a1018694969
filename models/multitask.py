"""One shared backbone, one head per task: the backbone runs once per forward (REFERENCE §8)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.fast_ops import resize_bilinear


class MultiTaskModel(nn.Module):
    """Hard parameter sharing: every head reads the same backbone features.

    Dense outputs are upsampled (bilinear) to the input size, so losses and metrics see the
    targets at full resolution; attribute heads return one logit per image. A single-task
    model is the same class with one head.
    """

    def __init__(self, backbone: nn.Module, heads: nn.ModuleDict) -> None:
        super().__init__()
        if len(heads) == 0:
            raise ValueError("a MultiTaskModel needs at least one head")
        self.backbone = backbone
        self.heads = heads

    def forward(self, images: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Outputs of ``tasks`` (all heads by default), keyed by task name.

        Leaving a task out (e.g. one stopped early) skips its head, not the shared backbone.
        """
        names = list(self.heads) if tasks is None else list(tasks)
        unknown = [name for name in names if name not in self.heads]
        if unknown:
            raise KeyError(f"no head for tasks {unknown}; heads: {list(self.heads)}")
        features = self.backbone(images)
        size = images.shape[-2:]
        return {name: _to_size(self.heads[name](features), size) for name in names}


    def output_layer(self, task: str) -> nn.Conv2d | nn.Linear:
        """The last layer of a task's head, whose bias sets what the untrained model predicts."""
        return [m for m in self.heads[task].modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]


def _to_size(output: Tensor, size: Sequence[int]) -> Tensor:
    """Dense maps (N x C x h x w) resized to ``size`` (bilinear; channels-last on the CPU); per-image outputs pass unchanged."""
    if output.dim() != 4 or output.shape[-2:] == size:
        return output
    return resize_bilinear(output, size)
