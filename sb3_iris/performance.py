"""Speed switches of IRIS, each behind the plain path and tested for equal results.

- ``mixed_precision``: bf16 autocast for the forward passes (CUDA, and CPUs with AMX / AVX512-BF16);
  losses, softmaxes and optimiser states stay in float32.
- ``channels_last``: NHWC memory format for the convolutional tokenizer and actor encoder.
- ``merge_last_token``: in imagination, the pass that only writes the last observation token of a frame
  into the KV cache is merged with the next step's action pass (K instead of K + 1 passes per step;
  the same computation, in a different grouping).
- ``fused_optimizers``: fused (or ``foreach``) Adam/AdamW kernels where torch provides them.
"""

from __future__ import annotations

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
    :param channels_last: NHWC convolutions; ``None``: on (8-12% faster for the tokenizer update on a 2-core
        AVX-512 CPU; the usual choice for CUDA)
    :param merge_last_token: merge the last-token pass with the next action pass in imagination
    :param fused_optimizers: fused Adam/AdamW; ``None``: on where torch supports it for the device
    """

    mixed_precision: Optional[bool] = None
    channels_last: Optional[bool] = None
    merge_last_token: bool = True
    fused_optimizers: Optional[bool] = None

    def resolved(self, device: torch.device) -> PerformanceOptions:
        """A copy with every ``None`` replaced by the choice for ``device``."""
        return PerformanceOptions(
            mixed_precision=bool(self.mixed_precision) and device_supports_bf16(device),
            channels_last=True if self.channels_last is None else self.channels_last,
            merge_last_token=self.merge_last_token,
            fused_optimizers=(device.type in ("cuda", "cpu"))
            if self.fused_optimizers is None
            else self.fused_optimizers,
        )

    def as_dict(self) -> dict:
        return asdict(self)


def autocast_context(options: PerformanceOptions, device: Union[torch.device, str]) -> AbstractContextManager:
    """bf16 autocast on ``device`` if ``options.mixed_precision``, else a no-op context."""
    device = torch.device(device)
    if options.mixed_precision and device_supports_bf16(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def configure_modules(options: PerformanceOptions, device: Union[torch.device, str], *modules: nn.Module) -> None:
    """Apply memory-format choices to convolutional ``modules`` in place."""
    device = torch.device(device)
    channels_last = options.channels_last if options.channels_last is not None else True
    if channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)


def optimizer_kwargs(options: PerformanceOptions, device: Union[torch.device, str]) -> dict:
    """Keyword arguments selecting fused optimiser kernels when enabled."""
    device = torch.device(device)
    fused = options.fused_optimizers if options.fused_optimizers is not None else device.type in ("cuda", "cpu")
    return {"fused": True} if fused else {}
