"""Device and dtype resolution: `auto` picks cuda > mps > cpu and says what it chose."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from retrv.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype_name: str  # "float32" | "bfloat16" | "float16"
    reason: str

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)


def resolve_device(requested: str = "auto", *, half: bool = False, origin: str = "--device") -> DeviceChoice:
    """Pick a device. `half` asks for bf16 on CUDA (fp16 on MPS); the CPU always runs float32.

    `origin` names where the request came from (a flag, `RETRV_DEVICE`, a config file line) in errors.
    """
    import torch

    requested = (requested or "auto").lower()
    if requested not in DEVICE_CHOICES and not requested.startswith("cuda:"):
        raise DeviceError(f"{origin}: unknown device {requested!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    if requested == "auto":
        if torch.cuda.is_available():
            device, reason = "cuda", f"auto: CUDA available ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device, reason = "mps", "auto: Apple MPS available"
        else:
            device, reason = "cpu", "auto: no GPU found"
    else:
        device, reason = requested, f"requested by {origin}"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"{origin}: {requested} was requested but torch sees no CUDA device")
        if device == "mps" and not torch.backends.mps.is_available():
            raise DeviceError(f"{origin}: mps was requested but MPS is not available")
    dtype = "float32"
    if half and device.startswith("cuda"):
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    elif half and device == "mps":
        dtype = "float16"
    return DeviceChoice(device=device, dtype_name=dtype, reason=reason)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for the block. Small forward passes on a busy 2-core machine run
    several times faster on one thread than on two (one MiniLM query: 18 ms vs 71 ms). The setting is
    process-wide: anything torch runs meanwhile on another thread gets one thread too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
