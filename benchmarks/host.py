"""What a benchmark ran on: the CPU's model, cores and instruction sets, and what PyTorch was allowed to use."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: Instruction sets that decide the precision and speed: AVX2 only means fp32; AVX512-BF16 or AMX, bf16.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict:
    """The CPU's model name and instruction sets (from /proc/cpuinfo on Linux), and the ones PyTorch uses: ATen's
    kernel capability and oneDNN's limit (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` make a newer CPU run
    the kernels of a plain AVX2 host)."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first processor's lines
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    import torch

    return {"model": info.get("model name", platform.machine()), "cores": os.cpu_count(),
            "flags": [f for f in FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
