"""Mixed precision and memory format for the forward pass, on CPU and GPU.

MONAI's trainers only autocast on CUDA (`torch.autocast("cuda")`); on CPUs with AMX-BF16 bf16 autocast with
channels_last is the largest speed lever, so the inferer owns the autocast instead.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer

from coronary_calcium.errors import InputError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast pays off on this device (AMX / AVX512-BF16 CPUs, Ampere+ GPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # oneDNN's own check: true with AVX512-BF16 or AMX, where bf16 matmuls and convolutions run natively
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def default_precision(device: str | torch.device = "cpu") -> str:
    """'bf16' where supported, else 'fp32'."""
    return "bf16" if bf16_supported(device) else "fp32"


class PrecisionInferer(Inferer):
    """Runs the network under autocast at the given precision, optionally in channels_last memory format.

    The logits come back as float32 so the loss and the metrics are computed in full precision.
    """

    def __init__(self, precision: str = "fp32", channels_last: bool = False) -> None:
        if precision not in PRECISIONS:
            raise InputError("precision", f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()


def prepare_network(network: torch.nn.Module, device: str | torch.device, channels_last: bool) -> torch.nn.Module:
    """Move the network to the device, in channels_last format when asked."""
    network = network.to(device)
    return network.to(memory_format=torch.channels_last) if channels_last else network
