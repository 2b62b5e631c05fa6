"""Full candidate tokens: what the reasoner itself would read for an item or a query.

A candidate's full tokens are the reasoner's own input embeddings of it, image first, then text:
- image: the vision tower's merged output (`model.model.get_image_features(...).pooler_output`), one
  row per merged patch (28x28 px for Qwen2-VL and Qwen2.5-VL, 32x32 px for Qwen3-VL), after resizing the image
  into the pixel budget; Qwen3-VL's vision tower also gives DeepStack features for those rows, which the
  text stack adds to their hidden states in its first layers (`CandidateTokens.deepstack`);
- text: the LLM's token embeddings of the text, truncated to `max_text_tokens`.

These rows feed the ICM (content / memory tokens), the Detail Inspection segments, and the
"w/o ICM" prompt. `parts` is anything with `.tokenizer` and `.image_processor` (a `LoadedReasoner`).
Gradients are never taken through the reasoner here: the rows come out detached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrv.errors import FeatureError

if TYPE_CHECKING:
    import torch

    from retrv.items import Item, Query

DEFAULT_MAX_TEXT_TOKENS = 256
PIXELS_PER_IMAGE_TOKEN = 28 * 28  # Qwen2(.5)-VL merges 2x2 patches of 14 px: one image token covers 28x28 pixels


def pixels_per_image_token(image_processor: Any) -> int:
    """The pixels one merged image token covers under this image processor: (patch side x merge size)^2,
    28x28 for Qwen2-VL and Qwen2.5-VL, 32x32 for Qwen3-VL."""
    patch = getattr(image_processor, "patch_size", None) or 14
    merge = getattr(image_processor, "merge_size", None) or 2
    return int(patch * merge) ** 2


@dataclass(frozen=True)
class GlanceBudget:
    """How small a candidate is in a reason-mode prompt without ICM: its image at most `image_tokens` merged
    tokens (4 = a 2x2 grid: 56x56 px for Qwen2.5-VL's 28-px merged patches, 64x64 px for Qwen3-VL's 32-px ones;
    fewer for a long thin image), its text the first `text_tokens` tokens. The model's own dynamic resolution, so
    no training is needed."""

    image_tokens: int = 4
    text_tokens: int = 16

    def as_token_budget(self, pixels_per_token: int = PIXELS_PER_IMAGE_TOKEN) -> TokenBudget:
        # Half a token of slack: the processor floors each side to whole patches, and a square image asked for
        # exactly N tokens' pixels can round down a whole row in floating point.
        return TokenBudget(
            max_image_pixels=int((self.image_tokens + 0.5) * pixels_per_token),
            min_image_pixels=pixels_per_token,
            max_text_tokens=self.text_tokens,
        )


@dataclass(frozen=True)
class TokenBudget:
    """The resolution of full tokens. Image pixel limits default to the image processor's own, which
    `load_reasoner(max_image_tokens=256)` caps at 256 merged tokens (about 448x448 px); a value here can
    only lower them."""

    max_image_pixels: int | None = None
    min_image_pixels: int | None = None
    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS


@dataclass
class CandidateTokens:
    """Full tokens of one item or query: `embeds` rows [0, n_image) are image tokens laid out as an
    `image_grid` = (rows, cols) merged grid in row-major order, the rest are the embeddings of `text_ids`.
    `deepstack` (D, n_image, H), Qwen3-VL only: what the text stack adds to the image rows' hidden states after
    each of its first D layers."""

    embeds: torch.Tensor  # (n, H)
    n_image: int = 0
    image_grid: tuple[int, int] | None = None
    text_ids: tuple[int, ...] = ()
    deepstack: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])


def unwrap_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay active inside it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def embed_ids(model: Any, ids: Any) -> torch.Tensor:
    """Token embeddings of a list / 1-D tensor of ids: (n, H) on the model's device."""
    import torch

    emb = unwrap_model(model).get_input_embeddings()
    ids = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long)
    return emb(ids.to(emb.weight.device))


def _open_image(path: str) -> Any:
    from retrv.images import load_image
    from retrv.scan import SkipFile

    try:
        return load_image(path)
    except SkipFile as exc:
        raise FeatureError(f"{path}: cannot read the image ({exc})") from None


@dataclass
class ImageTokens:
    """One image's vision-tower tokens (n, H) on a (rows, cols) merged grid, and its DeepStack features
    (D, n, H) when the model has them (Qwen3-VL)."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    deepstack: torch.Tensor | None = None


def image_tokens(
    model: Any, image_processor: Any, images: list[Any], budget: TokenBudget = TokenBudget()
) -> list[ImageTokens]:
    """Vision-tower tokens of PIL images in one batched call."""
    import torch

    if not images:
        return []
    base = unwrap_model(model)
    size = dict(getattr(image_processor, "size", None) or {})
    limits = [p for p in (budget.max_image_pixels, size.get("longest_edge")) if p]
    longest = min(limits) if limits else None
    shortest = budget.min_image_pixels or size.get("shortest_edge")
    kwargs = {}
    if longest and shortest:
        kwargs["size"] = {"shortest_edge": min(shortest, longest), "longest_edge": longest}
    batch = image_processor(images=images, return_tensors="pt", **kwargs)
    device = base.get_input_embeddings().weight.device
    grid = batch["image_grid_thw"].to(device)
    with torch.no_grad():
        out = base.model.get_image_features(pixel_values=batch["pixel_values"].to(device), image_grid_thw=grid)
    merge = base.config.vision_config.spatial_merge_size
    dtype = base.get_input_embeddings().weight.dtype
    levels = getattr(out, "deepstack_features", None) or []  # per level, one (n_i, H) tensor per image
    return [
        ImageTokens(
            tokens.to(dtype),
            (int(thw[1]) // merge, int(thw[2]) // merge),
            torch.stack([level[i] for level in levels]).to(dtype) if levels else None,
        )
        for i, (tokens, thw) in enumerate(zip(out.pooler_output, grid.tolist(), strict=True))
    ]


def text_ids(tokenizer: Any, text: str, budget: TokenBudget = TokenBudget()) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids[: budget.max_text_tokens])


def tokens_of(
    model: Any, parts: Any, texts: list[str | None], image_paths: list[str | None], budget: TokenBudget = TokenBudget()
) -> list[CandidateTokens]:
    """Full tokens of parallel lists of (text, image path); all images go through the vision tower at once."""
    import torch

    wanted = [i for i, p in enumerate(image_paths) if p is not None]
    pictures = image_tokens(model, parts.image_processor, [_open_image(str(image_paths[i])) for i in wanted], budget)
    by_index = dict(zip(wanted, pictures, strict=True))
    result = []
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = text_ids(parts.tokenizer, text, budget) if text else []
            picture = by_index.get(i)
            rows = [] if picture is None else [picture.tokens]
            if ids:
                rows.append(embed_ids(model, ids))
            if not rows:
                raise FeatureError(f"item {i} has neither text nor an image to read")
            result.append(
                CandidateTokens(
                    torch.cat(rows).detach(),
                    0 if picture is None else int(picture.tokens.shape[0]),
                    None if picture is None else picture.grid,
                    tuple(ids),
                    None if picture is None or picture.deepstack is None else picture.deepstack.detach(),
                )
            )
    return result


def candidate_tokens_batch(
    model: Any, parts: Any, items: list[Item], budget: TokenBudget = TokenBudget()
) -> list[CandidateTokens]:
    return tokens_of(model, parts, [it.text for it in items], [it.image_path for it in items], budget)


def candidate_tokens(model: Any, parts: Any, item: Item, budget: TokenBudget = TokenBudget()) -> CandidateTokens:
    return candidate_tokens_batch(model, parts, [item], budget)[0]


def full_tokens(model: Any, parts: Any, item: Item, budget: TokenBudget = TokenBudget()) -> torch.Tensor:
    """(n_tokens, hidden) full tokens of one item: image tokens then text token embeddings."""
    return candidate_tokens(model, parts, item, budget).embeds


def full_tokens_batch(
    model: Any, parts: Any, items: list[Item], budget: TokenBudget = TokenBudget()
) -> list[torch.Tensor]:
    """Full tokens of many items (one vision-tower call for all their images); pad with `icm.module.pad_tokens`."""
    return [c.embeds for c in candidate_tokens_batch(model, parts, items, budget)]


def query_text(query: Query) -> str | None:
    """The text a reasoner reads for a query: its instruction (if any) then its text."""
    parts = [p for p in (query.instruction, query.text) if p]
    return "\n".join(parts) or None


def query_tokens(model: Any, parts: Any, query: Query, budget: TokenBudget = TokenBudget()) -> CandidateTokens:
    """The query's own tokens (image features then text embeddings), for the ICM relation token.

    Composed parts of a query (`add` / `subtract`) steer the coarse vector only; the reasoner reads the main query.
    """
    image = str(query.image) if query.image is not None else None
    return tokens_of(model, parts, [query_text(query)], [image], budget)[0]
