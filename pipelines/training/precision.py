"""Pick compute precision and gradient checkpointing from the hardware, and say why.

bf16 only where it runs fast: CUDA devices with bf16 support, or CPUs with AMX / AVX512-BF16.
Elsewhere bf16 is emulated and ~12x slower than fp32 (GUIDE §3), so fp32 compute is chosen,
including as the NF4 compute dtype of QLoRA. Gradient checkpointing costs ~30% speed; it is only
turned on when the estimated training memory would not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: str  # "float32" or "bfloat16"
    reason: str
    gradient_checkpointing: bool
    checkpointing_reason: str
    device: str


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def choose(
    requested: str, checkpointing: str, *, parameters: int, batch_tokens: int, hidden: int, layers: int
) -> PrecisionChoice:
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if requested == "fp32":
        dtype, reason = "float32", "requested fp32"
    elif requested == "bf16":
        dtype, reason = "bfloat16", "requested bf16"
    elif cuda and torch.cuda.is_bf16_supported():
        dtype, reason = "bfloat16", f"auto: {torch.cuda.get_device_name()} computes bf16 natively"
    elif not cuda and _cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        dtype, reason = "bfloat16", "auto: this CPU has AMX/AVX512-BF16"
    else:
        where = "this GPU lacks bf16" if cuda else "this CPU has no bf16 units (bf16 would be ~12x slower)"
        dtype, reason = "float32", f"auto: {where}"

    if checkpointing in ("on", "off"):
        on = checkpointing == "on"
        return PrecisionChoice(dtype, reason, on, f"requested {checkpointing}", device)
    # Activations dominate: ~ layers * tokens * hidden * 34 bytes (fp32, attention + MLP), plus
    # weights, gradients and optimizer state of what trains (bounded here by all parameters x 16 bytes).
    bytes_per = 4 if dtype == "float32" else 2
    activations = layers * batch_tokens * hidden * 34 * bytes_per // 2
    estimate = parameters * bytes_per + activations
    if cuda:
        free = torch.cuda.mem_get_info()[0]
    else:
        free = _available_memory_bytes() or estimate * 4
    on = estimate > 0.7 * free
    why = f"auto: estimated {estimate / 2**30:.2f} GiB of {free / 2**30:.1f} GiB free: " + (
        "needed" if on else "not needed"
    )
    return PrecisionChoice(dtype, reason, on, why, device)
