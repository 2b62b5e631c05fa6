"""A vision tower's patch embedding as the matrix product it is.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL embed each patch with a Conv3d whose kernel is its stride and whose input is
exactly one kernel (the patch embedding views its input that way), so the convolution is a linear map of the
flattened patch. On a CPU the convolution is the slow way to compute it, the backward pass above all (docs/benchmarks.md,
7). Same parameters, same state-dict keys, same outputs to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PatchProjection(nn.Module):
    """Conv3d(kernel = stride, no padding) on one kernel-sized input per row, computed as `F.linear`."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.out_channels = conv.out_channels

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(patches.flatten(1), self.weight.flatten(1), self.bias)
        return out.view(-1, self.out_channels, 1, 1, 1)


def linear_patch_embeddings(model: Any) -> int:
    """Swap every vision patch embedding's `proj` Conv3d that is one kernel per patch for a `PatchProjection`;
    the number swapped (0 for a model without one)."""
    swapped = 0
    for module in model.modules():
        conv = getattr(module, "proj", None)
        if not (
            isinstance(conv, nn.Conv3d) and hasattr(module, "patch_size") and hasattr(module, "temporal_patch_size")
        ):
            continue
        side = module.patch_size
        one_kernel = tuple(conv.kernel_size) == (
            module.temporal_patch_size,
            *((side, side) if isinstance(side, int) else side),
        )
        plain = conv.groups == 1 and not any(conv.padding) and set(conv.dilation) == {1}
        if one_kernel and tuple(conv.stride) == tuple(conv.kernel_size) and plain:
            module.proj = PatchProjection(conv)
            swapped += 1
    return swapped
