"""The C kernel of the weighted group-lasso prox on the CPU: built on first use, cached, optional.

``optim/_prox_kernel.c`` runs the moment pass, the certified moment root and the write of
:mod:`optim.prox` tile by tile (a tile: whole groups, long contiguous rows, in cache), and
can apply Adam's update in the same pass as the moments: ProxAdam's weighted lasso step then
reads the weights twice where torch's fused Adam reads them once (the torch code: a dozen
passes). The moments are taken about expansion points the caller keeps (the last step's
group norms) or, without them, about ‖x‖ in a second pass; a group the moments do not
certify gets a second round about the model's root, and one still open is solved by the
float64 rows of :mod:`optim.prox`.

The source is compiled once per machine kind with the system C compiler (``$CC``, else
``cc``) into ``$XDG_CACHE_HOME/gsmtl`` (``~/.cache/gsmtl``; a user folder in the temp dir when
that is not writable), named by a hash of the source,
flags, compiler and the CPU's vector capability, so an edited source, another compiler or a
node with other vector units gets its own build (a compiler that rejects the vector flags
builds without them). It is loaded with :mod:`ctypes`, which releases the GIL during the
call, and runs on ``torch.get_num_threads()`` threads. A build is checked against its
checksum before it is loaded (a damaged one is built again). Without a compiler the torch code
runs instead (same guarantees, slower), after one warning saying why; ``GSMTL_PROX_KERNEL=0``
chooses the torch code silently. Plain C rather than a torch C++ extension: no torch headers (a build
takes about a second, not a minute) and no Python ABI.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shlex
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger("gsmtl")

SOURCE = Path(__file__).with_name("_prox_kernel.c")
#: Seconds one compile may take; a temporary build older than twice this is a killed build's leftover.
COMPILE_TIMEOUT_S = 300
_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-pthread"]
# The instruction sets torch's capability check vouches for, no more (a VM may lack the rest of an x86-64 level).
_ARCH = {"AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mprefer-vector-width=512"],
         "AVX2": ["-mavx2", "-mfma"]}
DTYPES = (torch.float32, torch.float64)
_TOO_LARGE = -2  # pk_lasso's status for a group with more than MAX_POSITIONS elements per row


class _Tensor(ctypes.Structure):
    """``pk_tensor`` of the C source (its comments say what each field holds)."""

    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("x", "d", "g", "m", "v", "rho")),
        *((name, ctypes.c_double) for name in ("c", "alpha", "decay", "wd")),
        *((name, ctypes.c_int64) for name in ("O", "A", "C", "B")),
        ("tau", ctypes.c_double), ("g0", ctypes.c_int64),
    ]


@dataclass(frozen=True)
class AdamUpdate:
    """Adam's update to apply before the prox, as torch.optim.Adam(W) computes it.

    Per tensor: x ← x·decay − α·m/d, d = √v + c, after m ← lerp(m, g, 1 − β₁),
    v ← β₂v + (1 − β₂)g², with g ← g + weight_decay·x first (Adam's coupled decay; AdamW puts
    it in ``decay``); d is the prox's metric. ``norms`` (per tensor, one per group in its
    dtype, or None) are expansion points ρ: given, the moments are taken in the pass of the
    update (one read of the weights less). Any ρ ≥ 0 is valid (see
    :func:`optim.prox._moment_root`); one close to the group's new ‖z‖ certifies it.
    """

    grads: Sequence[Tensor]
    exp_avgs: Sequence[Tensor]
    exp_avg_sqs: Sequence[Tensor]
    offsets: Sequence[float]
    alphas: Sequence[float]
    norms: Sequence[Tensor | None]
    decay: float
    weight_decay: float
    beta1: float
    beta2: float


def _arch_flags() -> list[str]:
    """Vector flags for this CPU's capability (portable across CPUs that have it)."""
    return _ARCH.get(torch.backends.cpu.get_cpu_capability(), []) if platform.machine() in ("x86_64", "AMD64") else []


def _cache_dirs() -> list[Path]:
    """Where builds are kept: the user's cache, else (read-only home) a folder of this user in the temp dir."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gsmtl"
    return [home, Path(tempfile.gettempdir()) / f"gsmtl-{os.getuid() if hasattr(os, 'getuid') else 'user'}"]


def _intact(path: Path) -> bool:
    """Whether ``path`` is a library this user built, whole: a truncated one would crash the loader."""
    try:
        digest = Path(f"{path}.sha256").read_text().strip()
        return _ours(path.parent) and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _ours(folder: Path) -> bool:
    """Whether only this user can write the folder: a library someone else could plant is never loaded."""
    info = folder.stat()
    return (not hasattr(os, "getuid") or info.st_uid == os.getuid()) and not info.st_mode & 0o022


def _compiler_version(cc: list[str]) -> str:
    out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.splitlines()[0] if out.stdout else " ".join(cc)


def _build() -> Path:
    """Compile the source unless this build is cached; the library's path. Raises OSError/SubprocessError."""
    cc = shlex.split(os.environ.get("CC") or "cc")  # CC may carry flags ("gcc -m64"), as make allows
    arch = _arch_flags()
    key = "\0".join([SOURCE.read_text(), *cc, *_FLAGS, *arch, _compiler_version(cc), platform.machine()])
    name = f"prox-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    for folder in _cache_dirs():
        if _intact(folder / name):
            return folder / name
    unwritable: OSError = PermissionError("no cache folder of this user")
    for folder in _cache_dirs():
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _ours(folder):
                continue
            _remove_stale_builds(folder)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".prox-", suffix=".so")
            break
        except OSError as err:
            unwritable = err
    else:
        raise unwritable
    os.close(fd)
    target = folder / name
    try:
        try:
            _compile(cc, [*_FLAGS, *arch], tmp)
        except subprocess.CalledProcessError:
            if not arch:
                raise
            _compile(cc, _FLAGS, tmp)  # an older compiler without the x86-64 level names
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # whole on disk before it has its name
        Path(f"{tmp}.sha256").write_text(hashlib.sha256(Path(tmp).read_bytes()).hexdigest())
        os.replace(f"{tmp}.sha256", f"{target}.sha256")  # never read half-written
        os.replace(tmp, target)  # atomic: concurrent builds of one key each install a whole library
    finally:
        for leftover in (tmp, f"{tmp}.sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return target


def _compile(cc: list[str], flags: list[str], out: str) -> None:
    subprocess.run([*cc, *flags, "-o", out, str(SOURCE), "-lm"], capture_output=True, text=True,
                   timeout=COMPILE_TIMEOUT_S, check=True)


def _remove_stale_builds(folder: Path) -> None:
    """Delete temporary builds a killed process left (a build's ``finally`` removes its own otherwise).

    Only those older than twice the compile timeout: a younger one may be a concurrent build.
    """
    for stale in folder.glob(".prox-*.so*"):
        try:
            if time.time() - stale.stat().st_mtime > 2 * COMPILE_TIMEOUT_S:
                stale.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: the build goes on regardless


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (with one warning saying why) when it cannot be had."""
    if os.environ.get("GSMTL_PROX_KERNEL", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(_build()))  # a damaged build fails its checksum and is built again
    except subprocess.CalledProcessError as err:
        first = (err.stderr or "").strip().splitlines()[:1]
        log.warning("prox kernel: the C build failed (%s); the torch code runs instead", first[0] if first else err)
        return None
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as err:  # no home, a malformed $CC
        log.warning("prox kernel: no C build (%s); the torch code runs instead", err)
        return None
    lib.pk_lasso.restype = ctypes.c_int
    lib.pk_lasso.argtypes = [
        ctypes.POINTER(_Tensor), ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    return lib


def layout(t: Tensor) -> tuple[int, int, int, int] | None:
    """(O, A, C, B) with element (o, a, j, b) at ((o·A + a)·C + j)·B + b, groups j; None if no such view.

    Contiguous tensors have A = 1, B = the kernel's spatial size; channels-last ones A = the
    spatial size, B = 1.
    """
    o, c, spatial = t.shape[0], t.shape[1], math.prod(t.shape[2:])
    if t.is_contiguous():
        return o, 1, c, spatial
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.ndim)
    if last is not None and t.is_contiguous(memory_format=last):
        return o, spatial, c, 1
    return None


def usable(xs: Sequence[Tensor], *others: Sequence[Tensor]) -> bool:
    """Whether the kernel takes these tensors (and ``others``, aligned with them, laid out alike).

    One CPU device and one dtype, float32 or float64; elements and groups in every tensor;
    views it can walk; no two tensors sharing memory (its threads update them at once); built.
    """
    if not xs or xs[0].device.type != "cpu" or xs[0].dtype not in DTYPES:
        return False
    for i, x in enumerate(xs):
        if x.dtype != xs[0].dtype or x.device != xs[0].device or not x.numel() or layout(x) is None:
            return False
        if not all(_alike(o[i], x) for o in others):
            return False
    spans = sorted((x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()) for x in xs)
    if any(end > start for (_, end), (start, _) in pairwise(spans)):
        return False
    return library() is not None


def _alike(a: Tensor, x: Tensor) -> bool:
    """Same shape, dtype and device as x, and the same strides where they matter (dims longer than 1)."""
    return (
        a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        and all(sa == sx for sa, sx, n in zip(a.stride(), x.stride(), x.shape) if n > 1)
    )


def weighted_lasso(
    xs: Sequence[Tensor], ds: Sequence[Tensor] | None, taus: Sequence[float], tol: float, *,
    adam: AdamUpdate | None = None,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Run the kernel on tensors ``usable`` took (all τ > 0).

    Returns per group float64 θ (0 for zero groups), a float64 Newton start and whether the
    group was settled; or None, having changed nothing, when a group is too large for the
    kernel's scratch (more than 8192 elements in one row of a tensor: huge spatial kernels).

    Settled groups are written (z, or 0); open ones are left as they are (after ``adam``'s
    update, whose metric is d = √v + c; without it ``ds`` is the metric).
    """
    lib = library()
    specs = (_Tensor * len(xs))()
    g0 = 0
    for i, (spec, x, tau) in enumerate(zip(specs, xs, taus)):
        spec.x, spec.tau, spec.g0 = x.data_ptr(), tau, g0
        if adam is None:
            spec.d = ds[i].data_ptr()
        else:
            spec.g, spec.m, spec.v = adam.grads[i].data_ptr(), adam.exp_avgs[i].data_ptr(), adam.exp_avg_sqs[i].data_ptr()
            spec.c, spec.alpha, spec.decay, spec.wd = adam.offsets[i], adam.alphas[i], adam.decay, adam.weight_decay
            norms = adam.norms[i]
            if (isinstance(norms, Tensor) and norms.dtype == x.dtype and norms.device == x.device
                    and norms.shape == (x.shape[1],) and norms.is_contiguous()):
                spec.rho = norms.data_ptr()
        spec.O, spec.A, spec.C, spec.B = layout(x)
        g0 += x.shape[1]
    theta, start = torch.empty(2, g0, dtype=torch.float64)
    settled = torch.empty(g0, dtype=torch.bool)
    betas = (adam.beta1, adam.beta2) if adam is not None else (0.0, 0.0)
    status = lib.pk_lasso(specs, len(xs), xs[0].dtype == torch.float64, *betas, tol, theta.data_ptr(),
                          start.data_ptr(), settled.data_ptr(), torch.get_num_threads())
    if status == _TOO_LARGE:
        return None
    if status != 0:
        raise MemoryError("prox kernel: out of memory for its scratch buffers")
    return theta, start, settled
