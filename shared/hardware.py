"""What a site trains on: the device, the CPU threads and the mixed precision, resolved once.

``site.yaml``'s ``device`` (``auto | cpu | cuda | cuda:N``), ``threads`` (``auto | N``) and
``amp`` (true/false) become one :class:`Hardware` at the edge (``fedrad-site check``,
``train-local``, ``evaluate``, ``finetune``, the site worker and the ClientApp), so every
part of a site agrees on it and ``check`` can print exactly what ``start`` will use.

Why ``auto`` means all of it: a hospital's training server is the site's own (32 cores, a
GPU); FedRad's own multi-site launchers (the demo, the loopback consortium, the tests) run
several sites on one machine and write ``threads: 1`` into each site.yaml instead.

On CUDA, mixed precision is on by default: bf16 where the GPU has it (Ampere and later;
no loss scaling needed), else fp16 with a gradient scaler. The CPU path never uses
autocast, so CPU training stays bit-for-bit what it was.

The process's hardware is *activated* once (:func:`activate`: torch's thread count, cuDNN
autotuning); :func:`shared.training.train_model` and :func:`shared.training.batched_logits`
then use :func:`active` unless given one. Torch is imported lazily: ``threads`` resolves
without it (``fedrad-site start`` sizes its worker's thread environment before any torch import).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

CUDA_INDEX_URL = "https://download.pytorch.org/whl/cu126"
CUDA_INSTALL = f"pip install torch==2.13.0 --index-url {CUDA_INDEX_URL}"


def usable_cores() -> int:
    """Every core this process may run on (CPU affinity, cgroup-pinned containers included), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def resolve_threads(threads: int | str) -> int:
    """``auto`` → :func:`usable_cores`; a number stays itself (validated >= 1 by the config)."""
    return usable_cores() if str(threads).strip().lower() == "auto" else int(threads)


@functools.cache
def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "CPU"


@dataclass(frozen=True)
class Hardware:
    """The resolved device, thread count and mixed precision one site process trains with."""

    device: str  # "cpu" or "cuda:N"
    threads: int  # torch intra-op threads
    amp_dtype: str | None  # "bfloat16" / "float16" on CUDA with amp on; None: float32
    name: str  # the GPU's name, or the CPU's
    memory_bytes: int | None = None  # the GPU's memory; None on CPU

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return getattr(torch, self.amp_dtype) if self.amp_dtype else None

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 underflows small gradients without loss scaling; bf16 has float32's range and needs none."""
        return self.amp_dtype == "float16"

    def describe(self) -> str:
        """One line for people: ``cuda:0 (NVIDIA H200, 139.8 GiB), 16 threads, mixed precision bfloat16``."""
        memory = f", {self.memory_bytes / 2**30:.1f} GiB" if self.memory_bytes else ""
        precision = f"mixed precision {self.amp_dtype}" if self.amp_dtype else "float32"
        return f"{self.device} ({self.name}{memory}), {self.threads} threads, {precision}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "amp": self.amp_dtype is not None}

    @classmethod
    def cpu(cls, threads: int) -> Hardware:
        return cls("cpu", threads, None, cpu_name())


def _cuda_missing(requested: str, where: str) -> ConfigError:
    import torch

    why = (
        f"this torch ({torch.__version__}) is the CPU-only build"
        if torch.version.cuda is None
        else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check the driver with `nvidia-smi`"
    )
    return ConfigError(
        f"{where}: {requested!r} asked for, but {why}. Install the CUDA build of torch at the site "
        f"(`{CUDA_INSTALL}`, README 'Training on a GPU'), or ask for auto (the GPU when there is one) or cpu"
    )


def resolve_hardware(
    device: str = "auto", threads: int | str = "auto", amp: bool = True, *, where: str = "site.yaml: key 'device'"
) -> Hardware:
    """The :class:`Hardware` for these site.yaml values; a GPU asked for but absent is a :class:`ConfigError`
    that names ``where`` the device came from (file and key, or a flag) and the CUDA install command."""
    import torch

    n_threads = resolve_threads(threads)
    wanted = str(device).strip().lower()
    if wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()):
        return Hardware.cpu(n_threads)
    if not torch.cuda.is_available():
        raise _cuda_missing(wanted, where)
    index = int(wanted.split(":", 1)[1]) if ":" in wanted else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"{where}: {wanted!r} asked for, but this machine has {count} GPU(s) "
            f"(cuda:0 … cuda:{count - 1}); ask for cuda:0, auto or cpu"
        )
    props = torch.cuda.get_device_properties(index)
    amp_dtype = None
    if amp:
        with torch.cuda.device(index):
            amp_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return Hardware(f"cuda:{index}", n_threads, amp_dtype, props.name, int(props.total_memory))


def site_hardware(cfg: Any, source: str | Path) -> Hardware:
    """:func:`resolve_hardware` for a validated site config (``device``, ``threads``, ``amp`` of
    :class:`shared.config.SiteDataConfig`) read from ``source``."""
    return resolve_hardware(cfg.device, cfg.threads, cfg.amp, where=f"{source}: key 'device'")


_active: Hardware | None = None


def activate(hw: Hardware) -> Hardware:
    """Make ``hw`` this process's hardware: torch's thread count, and on CUDA its device and cuDNN autotuning.

    cuDNN's benchmark mode picks the fastest convolution for each input shape once (the shapes of a
    training run repeat); TF32 matmuls for what stays float32. Neither is touched on CPU.
    """
    global _active
    import torch

    if torch.get_num_threads() != hw.threads:
        torch.set_num_threads(hw.threads)
    if hw.is_cuda:
        torch.cuda.set_device(hw.torch_device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _active = hw
    return hw


def active() -> Hardware:
    """The activated hardware; without :func:`activate`, the CPU at torch's current thread count."""
    if _active is not None:
        return _active
    import torch

    return Hardware.cpu(torch.get_num_threads())


@contextlib.contextmanager
def using(hw: Hardware) -> Iterator[Hardware]:
    """``hw`` is :func:`active` inside the block (threads untouched), the previous one after it."""
    global _active
    before, _active = _active, hw
    try:
        yield hw
    finally:
        _active = before


# -- placing a model and its batches --------------------------------------------------------------


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (CPU for a model without any)."""
    import torch

    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def is_2d_convnet(model: nn.Module, sample_ndim: int) -> bool:
    """``channels_last`` helps 2D convolutions (cuDNN's NHWC kernels, tensor cores); nothing else."""
    from torch import nn

    return sample_ndim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def placed(model: nn.Module, hw: Hardware, sample_ndim: int = 4) -> Iterator[bool]:
    """Run the block with ``model`` on ``hw``'s device (``channels_last`` for a 2D convnet on CUDA); yields
    whether channels_last is on. Afterwards the model is back where it was, in the default memory format,
    so what is saved or sent is a plain CPU state dict. A model already on that device is left as it is
    (a validation inside training). On CPU: nothing happens.
    """
    import torch

    where = device_of(model)
    if not hw.is_cuda or where == hw.torch_device:
        yield False
        return
    channels_last = is_2d_convnet(model, sample_ndim)
    model.to(hw.torch_device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield channels_last
    finally:
        model.to(where, memory_format=torch.contiguous_format)


def to_device(t: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A host batch on ``device``: pinned and copied without blocking on CUDA (the copy overlaps the
    GPU's work on the previous batch); unchanged when it is already there."""
    import torch

    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t


def autocast(hw: Hardware) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``hw``'s mixed precision on CUDA; a no-op context on CPU or with amp off."""
    import torch

    if not hw.is_cuda or hw.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=hw.autocast_dtype)


def synchronize(hw: Hardware) -> None:
    """Wait for the GPU's queued work (so a wall-clock time covers it); nothing on CPU."""
    if hw.is_cuda:
        import torch

        torch.cuda.synchronize(hw.torch_device)
