"""One trial on many processes: ``torchrun`` + ``torch.distributed`` + ``DistributedDataParallel``.

``torchrun --nproc_per_node N main_multi_trials.py --config_exp ...`` starts N processes with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set (multi-node: torchrun's rendezvous flags). Each
process trains the same trial on its share of every batch: the config's ``train_batch_size``
is the **global** batch, split evenly over the processes, so results do not depend on how
many there are beyond floating-point order. Gradients are averaged by DDP, so the Adam and
proximal steps see identical inputs on every rank and the parameters stay bit-identical.
Validation and test splits are sharded without padding and reduced (torchmetrics states,
summed losses), so metrics and early-stopping decisions are those of the whole split, on
every rank. Only rank 0 writes files, tables and wandb. Gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from utils.errors import ConfigError


@dataclass(frozen=True)
class Context:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, tables and wandb."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Context()


def from_environment() -> Context:
    """The process group torchrun describes in the environment (joined on first call), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def device_of(context: Context, requested: torch.device) -> torch.device:
    """This rank's device: its local GPU under torchrun on CUDA, else the requested one."""
    if context.distributed and requested.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return requested


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def local_batch(global_batch: int, context: Context, key: str) -> int:
    """A rank's share of a global batch; it must divide evenly."""
    if global_batch % context.world_size:
        raise ConfigError(f"config key '{key}': the global batch {global_batch} does not split over "
                          f"{context.world_size} processes; expected a multiple of {context.world_size}")
    return global_batch // context.world_size


def train_sampler(dataset: Dataset, context: Context, *, seed: int, drop_last: bool) -> DistributedSampler:
    """Each rank's part of a shuffled epoch; ``set_epoch`` reseeds it every epoch (so a resume is exact)."""
    return DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                              seed=seed, drop_last=drop_last)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th sample from ``rank``: an evaluation split without the padding DistributedSampler adds."""

    def __init__(self, length: int, context: Context) -> None:
        self.indices = list(range(context.rank, length, context.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def wrap(model: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """The module to run forward passes through: DDP over ``model`` when distributed, else ``model``.

    Built again whenever the set of trainable parameters changes (a task stopped early and its
    head was frozen), so DDP never waits for gradients that no longer come.
    """
    if not context.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)  # buffers (BatchNorm statistics) follow rank 0's


def average_gradients(params: Sequence[Tensor], context: Context) -> None:
    """Average the gradients of parameters DDP does not manage (the learned loss weights) over the ranks."""
    grads = [p.grad for p in params if p.grad is not None]
    if context.distributed and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= context.world_size
        for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(part.view_as(grad))


def share_buffers(model: nn.Module, context: Context) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Each rank updates its running statistics on its own part of the batch; DDP broadcasts them
    at the start of the next forward, but validation, checkpoints and the end of training
    must see one model, so they are shared after every epoch.
    """
    if context.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def convert_sync_batchnorm(model: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """BatchNorm layers that normalise with the statistics of the global batch (``sync_batchnorm``, CUDA only)."""
    if not context.distributed:
        return model
    if device.type != "cuda":
        raise ConfigError("config key 'sync_batchnorm': synchronised BatchNorm needs CUDA devices; expected false on the CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def sum_across(values: Tensor, context: Context) -> Tensor:
    """``values`` summed over all ranks (in place; the identity for one process)."""
    if context.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def min_across(values: Tensor, context: Context) -> Tensor:
    """``values`` minimised over all ranks (in place; the identity for one process)."""
    if context.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def gather(value: object, context: Context) -> list[object]:
    """Every rank's ``value``, in rank order (a list of one for a single process)."""
    if not context.distributed:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast(value: object, context: Context) -> object:
    """Rank 0's ``value`` on every rank."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def agree(flags: Sequence[bool], context: Context) -> list[bool]:
    """Whether any rank raised each flag (a stop request seen by one rank stops all at the same step)."""
    if not context.distributed:
        return list(flags)
    tensor = torch.tensor([float(flag) for flag in flags], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
