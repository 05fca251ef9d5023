"""Speed switches of IRIS, each behind the plain path and tested for equal results.

- ``mixed_precision``: bf16 autocast for the forward passes (CUDA, and CPUs with AMX / AVX512-BF16);
  losses, softmaxes and optimiser states stay in float32.
- ``channels_last``: NHWC memory format for the convolutional tokenizer and actor encoder.
- ``merge_last_token``: in imagination, the pass that only writes the last observation token of a frame
  into the KV cache is merged with the next step's action pass (K instead of K + 1 passes per step;
  the same computation, in a different grouping).
- ``fused_optimizers``: fused (or ``foreach``) Adam/AdamW kernels where torch provides them.
- ``compile_imagination``: imagination generates through the world model's static-shape one-token pass,
  wrapped in ``torch.compile`` (on CUDA with ``mode="reduce-overhead"``, i.e. replayed as a CUDA graph). Off by
  default: compiling takes a minute, and its gain has not been measured on a GPU yet (see the README).
- ``inverse_cdf_sampling``: imagined tokens, rewards and ends are drawn by inverting each row's cumulative
  distribution with one uniform number, instead of ``torch.multinomial`` (N exponential numbers per row). The same
  distribution (tested against the exact probabilities), a different random stream, so seeded runs differ from the
  plain path's; off by default so that earlier seeded results reproduce.
- ``tune_cpu_allocator``: keep freed CPU memory in the process (glibc ``mallopt``) instead of returning every
  large tensor to the kernel with ``munmap`` and page-faulting it back in on the next allocation (PyTorch's CPU
  allocator is plain ``malloc``; the README's performance section has the measured cost). It changes no numbers
  (only where memory comes from); the price is a higher resident set (freed memory is reused, not returned).
  Process-wide and not undone by later IRIS objects: applied when ``IRIS.learn()`` starts (announced at
  ``verbose >= 1``), never by ``IRIS.load`` or the evaluate / play tools.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch
from torch import nn


def cpu_supports_bf16() -> bool:
    """True if this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def device_supports_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is worth using on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


@dataclass
class PerformanceOptions:
    """Speed switches (see the module docstring). ``None`` means: decide from the device.

    :param mixed_precision: bf16 autocast; ``None``: off (opt-in, see the README's performance section)
    :param channels_last: NHWC convolutions; ``None``: on (faster on CPUs, the usual choice for CUDA; figures in
        the README)
    :param merge_last_token: merge the last-token pass with the next action pass in imagination
    :param fused_optimizers: fused Adam/AdamW; ``None``: on where torch supports it for the device
    :param compile_imagination: compiled static-shape one-token world-model passes in imagination; ``None``: off
    :param tune_cpu_allocator: keep freed CPU memory for reuse (see :func:`configure_cpu_allocator`); ``None``: on
        for CPU devices where the C library is glibc
    :param inverse_cdf_sampling: draw imagined tokens, rewards and ends by inverse CDF (off: ``torch.multinomial``)
    """

    mixed_precision: Optional[bool] = None
    channels_last: Optional[bool] = None
    merge_last_token: bool = True
    fused_optimizers: Optional[bool] = None
    compile_imagination: Optional[bool] = None
    tune_cpu_allocator: Optional[bool] = None
    inverse_cdf_sampling: bool = False

    def resolved(self, device: torch.device) -> PerformanceOptions:
        """A copy with every ``None`` replaced by the choice for ``device``."""
        return PerformanceOptions(
            mixed_precision=bool(self.mixed_precision) and device_supports_bf16(device),
            channels_last=True if self.channels_last is None else self.channels_last,
            merge_last_token=self.merge_last_token,
            fused_optimizers=(device.type in ("cuda", "cpu"))
            if self.fused_optimizers is None
            else self.fused_optimizers,
            compile_imagination=bool(self.compile_imagination),
            tune_cpu_allocator=(device.type == "cpu" and is_glibc())
            if self.tune_cpu_allocator is None
            else self.tune_cpu_allocator,
            inverse_cdf_sampling=self.inverse_cdf_sampling,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def autocast_context(options: PerformanceOptions, device: Union[torch.device, str]) -> AbstractContextManager:
    """bf16 autocast on ``device`` if ``options.mixed_precision``, else a no-op context."""
    device = torch.device(device)
    if options.mixed_precision and device_supports_bf16(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def configure_modules(options: PerformanceOptions, *modules: nn.Module) -> None:
    """Apply the memory-format choice of resolved ``options`` to convolutional ``modules`` in place."""
    if options.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)


def optimizer_kwargs(options: PerformanceOptions) -> dict:
    """Keyword arguments selecting fused optimiser kernels when resolved ``options`` enable them."""
    return {"fused": True} if options.fused_optimizers else {}


# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
#: Free memory at the top of the heap is returned to the kernel only above this size.
CPU_ALLOCATOR_TRIM_THRESHOLD = 1024**3
#: Extra memory requested from the kernel each time the heap grows.
CPU_ALLOCATOR_TOP_PAD = 64 * 1024**2
_cpu_allocator_configured = False


def is_glibc() -> bool:
    """True if this process runs on glibc (the C library whose ``mallopt`` knobs we set)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def configure_cpu_allocator() -> bool:
    """Make glibc ``malloc`` keep freed memory for reuse instead of unmapping it (process-wide).

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from one ``mmap`` each, so freeing them does not
    return the pages to the kernel), ``M_TRIM_THRESHOLD`` = 1 GiB and ``M_TOP_PAD`` = 64 MiB. The same effect as
    starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=67108864``.
    Changes no computation. Calling it again does nothing.

    :return: whether the allocator is now configured (False where the C library is not glibc)
    """
    global _cpu_allocator_configured
    if _cpu_allocator_configured:
        return True
    if not is_glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = (
            libc.mallopt(_M_MMAP_MAX, 0) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, CPU_ALLOCATOR_TRIM_THRESHOLD) == 1
            and libc.mallopt(_M_TOP_PAD, CPU_ALLOCATOR_TOP_PAD) == 1
        )
    except (OSError, AttributeError):
        return False
    _cpu_allocator_configured = applied
    return applied


def apply_process_options(options: PerformanceOptions) -> bool:
    """Apply the process-wide switches of resolved ``options`` (currently the CPU allocator).

    IRIS calls it when ``learn()`` starts, never when a model is built or loaded.

    :return: whether this call changed a process-wide setting (False when off, unsupported or already applied)
    """
    if not options.tune_cpu_allocator or _cpu_allocator_configured:
        return False
    return configure_cpu_allocator()
