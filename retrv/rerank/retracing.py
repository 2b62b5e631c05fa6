"""Visual retracing (RetLLM's MemVR-style FFN augmentation), added to a forward pass with hooks.

When the model hesitates, it looks again at what it was shown: after each decoder layer `l` in
[`first_layer`, `last_layer`) the hidden state at the last position is read out early
(`lm_head(norm(h))`); when the entropy of the top-`top_k` softmax of those logits, divided by log(top_k),
exceeds `threshold`, layer l+1's FFN output becomes

    (1 - alpha) * FFN(x) + alpha * s * act(x W1^T) W2^T

where V is the forward's input embeddings (the prompt's tokens, image tokens included), W1 = V * mean|gate_proj|
/ mean|V|, W2 = V^T * mean|down_proj| / mean|V| (the input embeddings used as a key-value memory sized like
the FFN's own weights), act the FFN's activation and s = mean|FFN(x)| / mean|act(x W1^T) W2^T| (the retraced
output at the FFN's own magnitude). It happens at most once per forward and per example, for every position of
that example. With the threshold never reached the forward is exactly the plain one.

Written for the dense Qwen-VL text stacks (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: `model.model.language_model.layers[i].mlp`
with `gate_proj`, `down_proj`, `act_fn`; its `norm`; the model's `lm_head`); a mixture-of-experts FFN has no
single W1 and W2 to scale, and is refused (`check_retracing`). A model with fewer layers than `first_layer` is not
touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RetracingConfig:
    first_layer: int = 5  # layers whose output is read out early: first_layer <= l < last_layer
    last_layer: int = 16
    threshold: float = 0.75  # normalised top-k entropy above which the next layer's FFN retraces
    alpha: float = 0.12
    top_k: int = 10


@dataclass
class _State:
    memory: Any = None  # (B, L, H) input embeddings, padding rows zeroed
    real: Any = None  # (B, L) bool
    last: Any = None  # (B,) index of each example's last real position
    done: Any = None  # (B,) bool: retraced already in this forward
    pending: Any = None  # (B,) bool: the next layer's FFN retraces


def normalised_top_entropy(logits: Any, top_k: int) -> Any:
    """(B,) entropy of the softmax over each row's `top_k` largest logits, divided by log(top_k)."""
    import torch

    top = torch.topk(logits.float(), min(top_k, logits.shape[-1]), dim=-1).values
    logp = torch.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(top.shape[-1])


def retraced(mlp: Any, x: Any, ffn: Any, memory: Any, alpha: float) -> Any:
    """The formula of the module doc for one example: x (L, H) the FFN input, ffn (L, H) its output, memory
    (N, H) the input embeddings (real rows only)."""
    scale_v = memory.abs().mean()
    w1 = memory * (mlp.gate_proj.weight.abs().mean() / scale_v)
    w2 = memory * (mlp.down_proj.weight.abs().mean() / scale_v)  # W2 = V^T scaled; x W1^T -> (L, N), then (N, H)
    recalled = mlp.act_fn(x @ w1.T) @ w2
    s = ffn.abs().mean() / recalled.abs().mean().clamp(min=1e-12)
    return (1.0 - alpha) * ffn + alpha * s * recalled


def check_retracing(model: Any, config: RetracingConfig | None) -> None:
    """Raise UsageError where retracing cannot do what it says: a mixture-of-experts FFN (no single `gate_proj`
    and `down_proj` to scale), or a model too shallow for `config`'s layers (nothing would ever be retraced)."""
    if config is None:
        return
    from retrv.errors import UsageError

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = base.model.language_model.layers
    sparse = [
        i for i, layer in enumerate(layers) if not (hasattr(layer.mlp, "gate_proj") and hasattr(layer.mlp, "down_proj"))
    ]
    if sparse:
        raise UsageError(
            f"--visual-retracing scales one dense FFN per layer, and this reasoner is a mixture-of-experts model "
            f"(layer {sparse[0]}: {type(layers[sparse[0]].mlp).__name__}); drop --visual-retracing",
            setting="visual_retracing",
        )
    if not range(config.first_layer, min(config.last_layer, len(layers) - 1)):
        raise UsageError(
            f"--visual-retracing reads layers {config.first_layer} to {config.last_layer - 1} out early and retraces "
            f"the layer after; this reasoner has {len(layers)} layers, so nothing would be retraced",
            setting="visual_retracing",
        )


@contextmanager
def visual_retracing(model: Any, config: RetracingConfig | None) -> Iterator[None]:
    """Retrace inside every forward of `model` within this block (nothing at all when `config` is None)."""
    if config is None:
        yield
        return
    import torch

    check_retracing(model, config)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = base.model.language_model
    layers = text.layers
    checked = range(config.first_layer, min(config.last_layer, len(layers) - 1))
    state = _State()

    def capture(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return
        mask = kwargs.get("attention_mask")
        real = (
            mask.bool()
            if isinstance(mask, torch.Tensor) and mask.dim() == 2
            else torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        )
        state.memory = embeds * real[..., None]
        state.real = real
        state.last = real.long().sum(1) - 1
        state.done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        state.pending = torch.zeros_like(state.done)

    def read_out(module: Any, args: Any, output: Any) -> None:
        if state.memory is None:
            return
        hidden = output[0] if isinstance(output, tuple) else output
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = base.lm_head(text.norm(hidden[rows, state.last]))
        hesitant = (normalised_top_entropy(logits, config.top_k) > config.threshold) & ~state.done
        state.pending |= hesitant
        state.done |= hesitant

    def retrace(module: Any, args: Any, output: Any) -> Any:
        if state.memory is None or not state.pending.any():
            return output
        x = args[0]
        out = output.clone()
        for b in torch.nonzero(state.pending).flatten().tolist():
            real = state.real[b]
            out[b, real] = retraced(module, x[b, real], output[b, real], state.memory[b, real], config.alpha)
        state.pending[:] = False
        return out

    handles = [text.register_forward_pre_hook(capture, with_kwargs=True)]
    for layer in checked:
        handles.append(layers[layer].register_forward_hook(read_out))
        handles.append(layers[layer + 1].mlp.register_forward_hook(retrace))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
