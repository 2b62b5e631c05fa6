"""The reasoner's input sequence as embeddings + 3-row M-RoPE positions (prompt v1).

Shared by inference (`rerank/reasoner.py`, `rerank/decode.py`) and training (SFT / GRPO), so both see byte-identical
sequences. Everything is a `Segment`: rows of input embeddings, their (3, L) position ids and the
token ids they stand for (soft ICM rows carry the `<|icm|>` id, image rows the `<|image_pad|>` id).

Positions follow Qwen2.5-VL `get_rope_index` (Qwen3-VL's is the same for images; it interleaves the three rows
inside its rotary embedding): text and soft tokens use one running index in all three rows; an image whose merged
grid is (rows, cols) starting at p gets temporal p, height p + r, width p + c, and the next position is
p + max(rows, cols). A Qwen3-VL image also brings DeepStack features: a segment keeps them for its image rows
(`Segment.visual_mask`, `Segment.deepstack`) and `deepstack_inputs` hands them to the text stack.

The prompt (candidates are 1-indexed, `[1]`..`[K]`, in coarse order)::

    <|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nQuery: {image}{text}\nCandidates:\n
    [1] <|icm|><|icm|>\n ... [K] <|icm|><|icm|>\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n

where the two soft rows of candidate i are its ICM content token then its relation token (or, with
`use_icm=False`, candidate i's full tokens). That is the "chat" style, for instruct VLMs. The "bare" style,
for a reasoner trained from scratch that needs no instructions, keeps only what the task needs and puts the
query last::

    <|im_start|>user\nCandidates:\n1<|icm|><|icm|>2<|icm|><|icm|>...K<|icm|><|icm|>\nQuery: {image}{text}<|im_end|>\n
    <|im_start|>assistant\n

Why a second style (docs/training.md has the measurements): the fixed part of the chat style is paid by the
ICM and the full-token prompt alike, which caps the token saving the ICM can show at small K; and a small
model learns to restate its query far sooner when nothing stands between the query and its answer.
A checkpoint records its style (`ReasonerConfig.prompt_style`).

An inspection segment appended after the model writes
`<inspection-index-start>i<inspection-index-end>` is `<|vision_start|>{image}<|vision_end|>{text}\n`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from retrv.config import CANDIDATE_TOKENS

if TYPE_CHECKING:
    import torch

    from retrv.icm.features import CandidateTokens

PROMPT_VERSION = 1  # ReasonerConfig.prompt_version this module builds


@dataclass(frozen=True)
class SpecialTokens:
    """Role -> token string (`retrv-reasoner.json` "special_tokens" uses these role names)."""

    icm: str = "<|icm|>"
    inspect_start: str = "<inspection-index-start>"
    inspect_end: str = "<inspection-index-end>"
    answer_start: str = "<answer>"
    answer_end: str = "</answer>"
    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"
    image_pad: str = "<|image_pad|>"
    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"

    @classmethod
    def from_mapping(cls, mapping: dict[str, str] | None) -> SpecialTokens:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (mapping or {}).items() if k in known})


_SHOWN = {
    "icm": "as two compressed tokens",
    "glance": "as a small preview (a thumbnail of its image and the first words of its text)",
    "full": "in full",
}


def system_prompt(special: SpecialTokens, shown: str = "icm") -> str:
    """The chat style's system prompt: the protocol, with the tags as they are written (one special token each
    in a retrv checkpoint, plain text for an instruct model; the grammar reads both the same)."""
    if shown not in _SHOWN:
        raise ValueError(f"candidate tokens must be one of {CANDIDATE_TOKENS}, got {shown!r}")
    # The glance prompt is for instruct models that were never trained on the protocol, so it spells out what
    # an inspection does; the icm and full prompts stay as checkpoints were trained on them (PROMPT_VERSION 1).
    then = " and stop: its full image and text follow. " if shown == "glance" else ". "
    return (
        f"You rank candidates for a retrieval query. Each candidate [i] is shown {_SHOWN[shown]}. "
        "Think step by step: describe the ideal result, eliminate clearly wrong candidates, then check "
        f"the close ones in detail. To see candidate i in full, write {special.inspect_start}i{special.inspect_end}"
        f"{then}Finish with {special.answer_start}i{special.answer_end}, the number of the best candidate."
    )


INSTRUCTION = "Which candidate best matches the query?"
PROMPT_STYLES = ("chat", "bare")


@dataclass
class Segment:
    embeds: torch.Tensor  # (L, H)
    position_ids: torch.Tensor  # (3, L) long
    token_ids: torch.Tensor  # (L,) long
    kind: str  # "prompt" | "generated" | "inspection" | "notice" | "sequence"
    candidate: int | None = None  # 0-based candidate of an "inspection" segment
    # Qwen3-VL: the rows with DeepStack features (L,) bool, and those features (D, rows, H); None for other models
    visual_mask: torch.Tensor | None = None
    deepstack: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def next_position(self) -> int:
        """The position of the token that follows this segment."""
        return int(self.position_ids.max()) + 1 if len(self) else 0


class SegmentBuilder:
    """Appends text, soft tokens and images one after another, tracking M-RoPE positions."""

    def __init__(
        self, tokenizer: Any, embed_tokens: Any, start_position: int = 0, special: SpecialTokens = SpecialTokens()
    ):
        self.tokenizer, self.embed_tokens, self.special = tokenizer, embed_tokens, special
        self.position = start_position
        self._embeds: list[torch.Tensor] = []
        self._positions: list[torch.Tensor] = []
        self._ids: list[torch.Tensor] = []
        self._deepstack: list[tuple[int, torch.Tensor]] = []  # (first row, (D, n, H) features of rows first..+n)
        self._rows = 0

    @property
    def _weight(self) -> torch.Tensor:
        return self.embed_tokens.weight

    def token_id(self, token: str) -> int:
        ids = self.tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"the reasoner tokenizer has no special token {token!r}")
        return int(ids[0])

    def _push(self, embeds: torch.Tensor, positions: torch.Tensor, ids: torch.Tensor) -> SegmentBuilder:
        self._embeds.append(embeds.to(self._weight.device, self._weight.dtype))
        self._positions.append(positions.to(self._weight.device))
        self._ids.append(ids.to(self._weight.device))
        self._rows += int(embeds.shape[0])
        self.position = int(positions.max()) + 1
        return self

    def _text_positions(self, n: int) -> torch.Tensor:
        import torch

        return (torch.arange(n) + self.position).view(1, -1).expand(3, -1)

    def ids(self, token_ids: list[int] | tuple[int, ...]) -> SegmentBuilder:
        import torch

        if not token_ids:
            return self
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=self._weight.device)
        return self._push(self.embed_tokens(ids), self._text_positions(len(ids)), ids)

    def text(self, text: str) -> SegmentBuilder:
        return self.ids(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else self

    def soft(self, vectors: torch.Tensor) -> SegmentBuilder:
        """(n, H) vectors at `n` `<|icm|>` placeholder positions."""
        import torch

        ids = torch.full((vectors.shape[0],), self.token_id(self.special.icm), dtype=torch.long)
        return self._push(vectors, self._text_positions(vectors.shape[0]), ids)

    def image(
        self, tokens: torch.Tensor, grid: tuple[int, int], deepstack: torch.Tensor | None = None
    ) -> SegmentBuilder:
        """`<|vision_start|>` + image tokens on a (rows, cols) merged grid + `<|vision_end|>`; `deepstack` (D, n, H)
        are the image rows' DeepStack features (Qwen3-VL)."""
        import torch

        rows, cols = grid
        if rows * cols != tokens.shape[0]:
            raise ValueError(f"image grid {rows}x{cols} does not match {tokens.shape[0]} image tokens")
        self.ids([self.token_id(self.special.vision_start)])
        if deepstack is not None:
            if deepstack.shape[1] != tokens.shape[0]:
                raise ValueError(f"{deepstack.shape[1]} rows of DeepStack features for {tokens.shape[0]} image tokens")
            self._deepstack.append((self._rows, deepstack.to(self._weight.device, self._weight.dtype)))
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        p = self.position
        positions = torch.stack([torch.full((rows * cols,), p), p + r.reshape(-1), p + c.reshape(-1)])
        ids = torch.full((rows * cols,), self.token_id(self.special.image_pad), dtype=torch.long)
        self._push(tokens, positions, ids)  # next position: p + max(rows, cols), as in get_rope_index
        return self.ids([self.token_id(self.special.vision_end)])

    def candidate(self, tokens: CandidateTokens) -> SegmentBuilder:
        """Full tokens: the image block (if any) then the text's token embeddings."""
        if tokens.n_image:
            assert tokens.image_grid is not None, "image tokens come with their grid"
            self.image(tokens.embeds[: tokens.n_image], tokens.image_grid, tokens.deepstack)
        if tokens.text_ids:
            self._push(
                tokens.embeds[tokens.n_image :], self._text_positions(len(tokens.text_ids)), _long(tokens.text_ids)
            )
        return self

    def build(self, kind: str, candidate: int | None = None) -> Segment:
        import torch

        if not self._embeds:
            raise ValueError("an empty segment")
        mask, deepstack = None, None
        if self._deepstack:
            mask = torch.zeros(self._rows, dtype=torch.bool, device=self._weight.device)
            for first, features in self._deepstack:
                mask[first : first + features.shape[1]] = True
            deepstack = torch.cat([features for _, features in self._deepstack], dim=1)
        return Segment(
            torch.cat(self._embeds),
            torch.cat(self._positions, dim=1),
            torch.cat(self._ids),
            kind,
            candidate,
            mask,
            deepstack,
        )


def _long(values: tuple[int, ...]) -> torch.Tensor:
    import torch

    return torch.tensor(list(values), dtype=torch.long)


def prompt_layout(
    k: int, style: str, shown: str = "icm", special: SpecialTokens = SpecialTokens()
) -> list[tuple[str, str | int | None]]:
    """The prompt of `k` candidates as parts in order: ("text", piece) tokenised on its own, ("query", None) the
    query's tokens, ("candidate", i) candidate i's two soft tokens (or its full tokens). `build_prompt` walks it;
    so does `retrv train pretrain --prompt-style`, which lays its texts out the same way with placeholders."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    s = special
    parts: list[tuple[str, str | int | None]] = []
    if style == "chat":
        parts += [
            ("text", f"{s.im_start}system\n{system_prompt(s, shown)}{s.im_end}\n{s.im_start}user\nQuery: "),
            ("query", None),
            ("text", "\n"),
        ]
    else:
        parts.append(("text", f"{s.im_start}user\n"))
    parts.append(("text", "Candidates:\n"))
    for i in range(k):
        parts += [("text", f"[{i + 1}] " if style == "chat" else str(i + 1)), ("candidate", i)]
        parts += [("text", "\n")] if style == "chat" else []
    parts += [("text", INSTRUCTION)] if style == "chat" else [("text", "\nQuery: "), ("query", None)]
    parts.append(("text", f"{s.im_end}\n{s.im_start}assistant\n"))
    return parts


def build_prompt(
    tokenizer: Any,
    embed_tokens: Any,
    query: CandidateTokens,
    *,
    soft_tokens: torch.Tensor | None = None,
    full: list[CandidateTokens] | None = None,
    special: SpecialTokens = SpecialTokens(),
    style: str = "chat",
    shown: str | None = None,
) -> Segment:
    """The prompt segment, starting at position 0, in `style` ("chat" or "bare", see the module docstring).

    Pass `soft_tokens` (K, 2, H) [content, relation] per candidate, or `full` (one `CandidateTokens` per
    candidate: its full tokens, or its glance tokens with `shown="glance"`); exactly one of them.
    """
    if (soft_tokens is None) == (full is None):
        raise ValueError("build_prompt needs exactly one of soft_tokens or full")
    k = len(full) if full is not None else int(soft_tokens.shape[0])  # type: ignore[union-attr]
    b = SegmentBuilder(tokenizer, embed_tokens, 0, special)
    for kind, value in prompt_layout(k, style, shown or ("icm" if soft_tokens is not None else "full"), special):
        if kind == "text":
            b.text(value)  # type: ignore[arg-type]
        elif kind == "query":
            b.candidate(query)
        elif full is not None:
            b.candidate(full[value])  # type: ignore[index]
        else:
            b.soft(soft_tokens[value])  # type: ignore[index]
    return b.build("prompt")


def inspection_segment(
    tokenizer: Any,
    embed_tokens: Any,
    candidate_index: int,
    tokens: CandidateTokens,
    start_position: int,
    special: SpecialTokens = SpecialTokens(),
) -> Segment:
    """Candidate `candidate_index` (0-based)'s full tokens, appended after an inspection request."""
    b = SegmentBuilder(tokenizer, embed_tokens, start_position, special)
    return b.candidate(tokens).text("\n").build("inspection", candidate_index)


def text_segment(
    tokenizer: Any, embed_tokens: Any, text_or_ids: str | list[int], start_position: int, kind: str = "generated"
) -> Segment:
    b = SegmentBuilder(tokenizer, embed_tokens, start_position)
    if isinstance(text_or_ids, str):
        b.text(text_or_ids)
    else:
        b.ids(text_or_ids)
    return b.build(kind)


def concat_segments(segments: list[Segment]) -> Segment:
    """One segment of the whole sequence (for a fresh prefill, or a training forward pass)."""
    import torch

    mask, deepstack = None, None
    if any(s.deepstack is not None for s in segments):
        mask = torch.cat([_visual_mask(s) for s in segments])
        deepstack = torch.cat([s.deepstack for s in segments if s.deepstack is not None], dim=1)
    return Segment(
        torch.cat([s.embeds for s in segments]),
        torch.cat([s.position_ids for s in segments], dim=1),
        torch.cat([s.token_ids for s in segments]),
        "sequence",
        None,
        mask,
        deepstack,
    )


def _visual_mask(segment: Segment) -> torch.Tensor:
    import torch

    if segment.visual_mask is not None:
        return segment.visual_mask
    return torch.zeros(len(segment), dtype=torch.bool, device=segment.embeds.device)


def deepstack_inputs(segments: list[Segment], length: int) -> dict[str, Any]:
    """The text stack's DeepStack arguments for `segments` right-padded to `length` rows (as `batch_segments`
    lays them out): `visual_pos_masks` (B, length) and `deepstack_visual_embeds`, one (rows, H) tensor per level
    in the mask's row-major order. Empty when no segment has DeepStack features (every model but Qwen3-VL)."""
    import torch

    if all(s.deepstack is None for s in segments):
        return {}
    mask = torch.zeros(len(segments), length, dtype=torch.bool, device=segments[0].embeds.device)
    for i, s in enumerate(segments):
        mask[i, : len(s)] = _visual_mask(s)
    features = torch.cat([s.deepstack for s in segments if s.deepstack is not None], dim=1)
    return {"visual_pos_masks": mask, "deepstack_visual_embeds": list(features)}


def batch_segments(segments: list[Segment]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences for one training forward: embeds (B, L, H), position_ids (3, B, L), attention_mask (B, L)."""
    import torch

    longest = max(len(s) for s in segments)
    first = segments[0].embeds
    embeds = first.new_zeros(len(segments), longest, first.shape[-1])
    positions = torch.zeros(3, len(segments), longest, dtype=torch.long, device=first.device)
    mask = torch.zeros(len(segments), longest, dtype=torch.long, device=first.device)
    for i, s in enumerate(segments):
        embeds[i, : len(s)] = s.embeds
        positions[:, i, : len(s)] = s.position_ids
        mask[i, : len(s)] = 1
    return embeds, positions, mask
