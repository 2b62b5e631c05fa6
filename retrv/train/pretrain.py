"""`retrv train pretrain`: pretrain a small base VLM from scratch on the captions, pairs and texts of a world.

A world with no pretrained model (the synthetic world of `retrv data synth`) still needs a base reasoner
that can see: this stage builds a Qwen2.5-VL with random weights (`train.random_models.build_random_vlm`, its
byte-level BPE tokenizer fitted to the world's own texts) and trains every weight, vision tower included, on up
to three kinds of example drawn from the training split:

- caption: (image -> its caption), language modelling on the caption tokens. Every image of the split
  whose caption is known (`src_content` "caption" or "scene", else the text of an image+text item).
- pair: (query, candidate -> "Yes" / "No"), the exact prompt score mode reads (`rerank.prompts`,
  with the task instruction the bench adds), for the positive, the first `hard_negatives` hard negatives
  (`neg_cand_list`: in the synthetic world the same words bound differently) and `random_negatives`
  other pool members.
- text (`--texts`): language modelling of the split's other texts (the teacher CoT in `cot/train_cot.jsonl`),
  each after its query ("Query: ..." and/or the query image), so that every word the later stages write has a
  trained embedding (a LoRA SFT stalls on untrained rows; docs/training.md) and copying from the query starts
  here. Where a text asks to inspect candidate i (and its record lists the candidates), candidate i's image
  and/or text is injected right after the request, untrained, as the reasoner injects it: what the CoT says a
  candidate shows is then learnt from the candidate, not from the model's priors. With `--prompt-style bare|chat` the query is
  laid out as reason mode's prompt, the `<|icm|>` embedding standing for the candidates' soft tokens, so the
  copies learnt here are learnt where the reasoner makes them.

Loss: cross-entropy on the answer tokens only (the caption, the Yes/No token or the text, each + end of
turn), averaged per example, then over the batch, so a short Yes/No answer weighs as much as a caption.

The output directory is a plain model directory (save_pretrained + tokenizer + image processor, the
layout `build_random_vlm` writes), next to `checkpoints/`, `metrics.jsonl` and `retrv-train.json`:
`--reasoner OUT` loads it for score mode, and `retrv train icm --reasoner OUT` starts from it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import TrainConfigError
from retrv.progress import ProgressCallback, emit
from retrv.rerank.sequence import PROMPT_STYLES
from retrv.train.config import TrainConfig, help_text
from retrv.train.loop import DataIssues, ShuffledBatches, TrainSummary, save_pretrained_model, train
from retrv.train.pretrain_examples import (
    CAPTION_REQUEST,
    CAPTION_SYSTEM,
    PretrainExample,
    Side,
    load_examples,
    world_corpus,
)

if TYPE_CHECKING:
    import torch

IGNORE = -100


@dataclass
class PretrainConfig(TrainConfig):
    """`retrv train pretrain`: a tiny VLM trained from scratch on (image -> caption) and (query, candidate -> Yes/No)."""

    data: str | None = field(
        default=None,
        metadata=help_text(
            "M-BEIR-layout dataset root whose images have captions, e.g. one written by `retrv data synth`.",
            required=True,
        ),
    )
    base: str | None = field(
        default=None,
        metadata=help_text("Continue from this model directory instead of building a new random tiny model."),
    )
    split: str = field(default="train", metadata=help_text("Which query split to train on."))
    hidden: int = field(default=64, metadata=help_text("LLM hidden size of the new model."))
    layers: int = field(default=2, metadata=help_text("LLM layers of the new model."))
    heads: int = field(default=4, metadata=help_text("LLM attention heads of the new model."))
    kv_heads: int = field(
        default=2, metadata=help_text("LLM key/value heads of the new model (grouped-query attention).")
    )
    vision_hidden: int = field(default=32, metadata=help_text("Vision tower hidden size of the new model."))
    vision_depth: int = field(default=2, metadata=help_text("Vision tower blocks of the new model."))
    rope_theta: float = field(
        default=1000.0,
        metadata=help_text(
            "RoPE base of the new model. Too large and the image's width axis (the lowest M-RoPE frequencies) barely "
            "turns across a small image, so left and right look alike; too small and no pair turns slowly enough for "
            "attention by content over a long prompt (at 10 the reasoner could not copy its query)."
        ),
    )
    mrope_section: str = field(
        default="",
        metadata=help_text(
            "Rotary pairs of each attention head given to the temporal, height and width axes, e.g. 1,1,6 (sum: head "
            "size / 2). Default: one each to temporal and height, the rest to width, the axis that tells left from right."
        ),
    )
    vocab_size: int = field(default=1024, metadata=help_text("Byte-level BPE vocabulary fitted to the world's texts."))
    image_size: int = field(
        default=112,
        metadata=help_text(
            "Images are resized to about this many pixels a side: (size/28)^2 image tokens each (112 -> 16)."
        ),
    )
    instructions: bool = field(
        default=True,
        metadata=help_text(
            "Give each pair its dataset's instruction (instructions/query_instructions.tsv), as `retrv bench` does."
        ),
    )
    captions: bool = field(default=True, metadata=help_text("Train on (image -> caption) examples."))
    pairs: bool = field(
        default=True, metadata=help_text("Train on (query, candidate -> Yes/No) examples (score mode).")
    )
    texts: bool = field(
        default=False,
        metadata=help_text(
            "Also language-model the world's training texts (the CoT in cot/train_cot.jsonl), so the base has seen "
            "every word later stages write; without it SFT must learn untrained token embeddings through a LoRA."
        ),
    )
    texts_file: str | None = field(
        default=None,
        metadata=help_text(
            'The JSONL --texts reads (records with "cot"; "qid" or "query", a query to write it after; '
            '"context", text given before it); default: '
            "<data>/cot/<split>_cot.jsonl. `retrv data synth` also writes cot/train_skills.jsonl: the CoT's "
            "restatement of a text query and its detailed checks' comparisons, to learn one at a time first."
        ),
    )
    prompt_style: str = field(
        default="",
        metadata=help_text(
            "Lay each text with a query out as reason mode's prompt of this style (bare or chat, as `retrv train icm "
            "--prompt-style`), the <|icm|> token's own embedding standing for every candidate's two soft tokens, so "
            "that what the texts teach is learnt where the reasoner will use it (a copy learnt in one layout was not "
            "found in another: docs/training.md). Empty: each text after its query alone."
        ),
    )
    num_candidates: int = field(
        default=8,
        metadata=help_text(
            "Candidates in the --prompt-style layout of a text whose record lists none (the skills' restatements)."
        ),
    )
    hard_negatives: int = field(
        default=2,
        metadata=help_text(
            "Hard negatives per query (from neg_cand_list, in file order) added as 'No' pairs; -1: all of them."
        ),
    )
    random_negatives: int = field(
        default=1,
        metadata=help_text("Pool members that are neither positive nor hard negative, added as 'No' pairs per query."),
    )
    lr: float = field(
        default=3e-3, metadata=help_text("Peak learning rate (AdamW); from-scratch training wants a high one.")
    )
    warmup_steps: int = field(default=20, metadata=help_text("Linear warm-up steps before the schedule."))

    def rope_sections(self) -> list[int]:
        """--mrope-section as three ints ([] when it does not parse)."""
        if not self.mrope_section:
            half = self.hidden // max(self.heads, 1) // 2
            return [1, 1, half - 2] if half >= 3 else [half, 0, 0]
        try:
            return [int(x) for x in self.mrope_section.split(",")]
        except ValueError:
            return []

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise TrainConfigError("--data is required: an M-BEIR-layout dataset directory")
        for name in (
            "hidden",
            "layers",
            "heads",
            "kv_heads",
            "vision_hidden",
            "vision_depth",
            "vocab_size",
            "image_size",
        ):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2 or self.heads % self.kv_heads:
            raise TrainConfigError(
                f"--hidden {self.hidden} must split into --heads {self.heads} of even size, "
                f"and --heads must be a multiple of --kv-heads {self.kv_heads}"
            )
        if self.vision_hidden % 4:
            raise TrainConfigError(
                f"--vision-hidden must be a multiple of 4 (4 vision heads), got {self.vision_hidden}"
            )
        section = self.rope_sections()
        if len(section) != 3 or min(section) < 0 or sum(section) * 2 != self.hidden // self.heads:
            raise TrainConfigError(
                f"--mrope-section must be three counts summing to head size / 2 = "
                f"{self.hidden // self.heads // 2}, got {self.mrope_section!r}"
            )
        if self.rope_theta <= 0:
            raise TrainConfigError(f"--rope-theta must be positive, got {self.rope_theta}")
        if self.image_size < 28:
            raise TrainConfigError(f"--image-size must be at least 28 (one merged 28x28 patch), got {self.image_size}")
        if self.texts_file is not None and not Path(self.texts_file).is_file():
            raise TrainConfigError(f"--texts-file {self.texts_file}: no such file")
        if not (self.captions or self.pairs or self.texts):
            raise TrainConfigError("--no-captions and --no-pairs (without --texts) leave nothing to train on")
        if self.prompt_style and self.prompt_style not in PROMPT_STYLES:
            raise TrainConfigError(
                f"--prompt-style must be one of {', '.join(PROMPT_STYLES)} or empty, got {self.prompt_style!r}"
            )
        if self.num_candidates < 1:
            raise TrainConfigError(f"--num-candidates must be at least 1, got {self.num_candidates}")
        if self.hard_negatives < -1:
            raise TrainConfigError(f"--hard-negatives must be >= -1 (-1: all), got {self.hard_negatives}")
        if self.random_negatives < 0:
            raise TrainConfigError(f"--random-negatives must be >= 0, got {self.random_negatives}")


# ---------------------------------------------------------------- batches


class PretrainCollator:
    """Examples -> one right-padded batch: input_ids, attention_mask, mm_token_type_ids, labels (answer tokens
    only), pixel_values, image_grid_thw, is_pair and the Yes/No ids. The prompt is rendered exactly as score
    mode renders it and tokenised by the processor; the answer ids are appended after it. With `prompt_style`,
    a text's prompt is instead reason mode's (`reasoning_prompt`), built as ids."""

    def __init__(
        self, tokenizer: Any, processor: Any, issues: DataIssues, prompt_style: str = "", num_candidates: int = 8
    ) -> None:
        from retrv.rerank.prompts import SCORE_SYSTEM, render
        from retrv.rerank.scorer import pick_answer_tokens

        self.tokenizer, self.processor, self.issues = tokenizer, processor, issues
        self.prompt_style, self.num_candidates = prompt_style, num_candidates
        self.answers = pick_answer_tokens(tokenizer, render([], tokenizer, processor, system=SCORE_SYSTEM))
        self.end = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.vision_start, self.vision_end, self.image_pad = (
            int(tokenizer.convert_tokens_to_ids(t)) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
        )

    def prompt(self, e: PretrainExample) -> tuple[str, list[str]]:
        """The prompt string and its image paths, in order."""
        from retrv.rerank.prompts import SCORE_SYSTEM, Segment, render, score_segments

        if e.kind == "text":  # language modelling of an assistant turn, after its query when there is one
            if e.query.text is None and e.query.image_path is None:
                return "<|im_start|>assistant\n" + e.context, []
            if self.prompt_style:
                return "", []  # the reasoner's own layout, built as ids by `reasoning_prompt`
            segments = [Segment("image")] if e.query.image_path else []
            segments += [Segment("text", f"Query: {e.query.text}")] if e.query.text else []
            prompt = render(segments, self.tokenizer, self.processor, system=None) + e.context
            return prompt, [p for p in [e.query.image_path] if p]
        if e.kind == "caption":
            return render(
                [Segment("image"), Segment("text", CAPTION_REQUEST)],
                self.tokenizer,
                self.processor,
                system=CAPTION_SYSTEM,
            ), [e.query.image_path]  # type: ignore[list-item]
        c = e.candidate
        assert c is not None
        segments = score_segments(
            query_text=e.query.text,
            query_image=e.query.image_path is not None,
            candidate_text=c.text,
            candidate_image=c.image_path is not None,
            answers=(self.answers.yes, self.answers.no),
            task=e.instruction,
        )
        images = [p for p in (e.query.image_path, c.image_path) if p is not None]
        return render(segments, self.tokenizer, self.processor, system=SCORE_SYSTEM), images

    def target(self, e: PretrainExample, grids: list[tuple[int, int, int]]) -> tuple[list[int], list[int], list[int]]:
        """The answer's ids, labels and mm_token_type_ids. A text's inspections are injected after each request,
        as the reasoner injects them (`rerank.sequence.inspection_segment`), untrained; `grids` are the
        (t, h, w) patch grids of the text's images in order: its query image when laid out, then the inspected."""
        if e.kind == "pair":
            ids = [self.answers.yes_id if e.answer else self.answers.no_id, self.end]
            return ids, ids, [0, 0]
        from retrv.rerank.sequence import SpecialTokens
        from retrv.train.sft import split_reasoning

        images = iter(grids)
        ids, types = self.reasoning_prompt(e, images) if self.laid_out(e) else ([], [])
        labels = [IGNORE] * len(ids)
        injections = iter(e.inspections)
        for piece in split_reasoning(e.caption, SpecialTokens()):
            written = self.tokenizer.encode(piece, add_special_tokens=False)
            ids, labels, types = ids + written, labels + written, types + [0] * len(written)
            if piece.endswith(SpecialTokens().inspect_end):
                block, block_types = self.injected(next(injections, ""), images)
                ids, labels, types = ids + block, labels + [IGNORE] * len(block), types + block_types
        return ids + [self.end], labels + [self.end], types + [0]

    def laid_out(self, e: PretrainExample) -> bool:
        """Whether `e` is a text written in the reasoner's prompt layout (--prompt-style)."""
        return (
            bool(self.prompt_style)
            and e.kind == "text"
            and (e.query.text is not None or e.query.image_path is not None)
        )

    def reasoning_prompt(self, e: PretrainExample, grids: Any) -> tuple[list[int], list[int]]:
        """Ids and token types of reason mode's prompt (`rerank.sequence.prompt_layout`) for `e`'s query, each
        candidate's two soft tokens as `<|icm|>` ids, then `e.context`: piece by piece as `build_prompt`
        tokenises it, so that the two are the same ids wherever the soft tokens stand."""
        from retrv.icm.features import text_ids
        from retrv.rerank.sequence import SpecialTokens, prompt_layout

        special = SpecialTokens()
        icm = int(self.tokenizer.convert_tokens_to_ids(special.icm))
        ids: list[int] = []
        types: list[int] = []
        for kind, value in prompt_layout(e.candidates or self.num_candidates, self.prompt_style, "icm", special):
            if kind == "text":
                piece = self.tokenizer(value, add_special_tokens=False)["input_ids"]
                ids, types = ids + piece, types + [0] * len(piece)
            elif kind == "candidate":
                ids, types = ids + [icm, icm], types + [0, 0]
            else:
                if e.query.image_path:
                    block, block_types = self.image_block(next(grids))
                    ids, types = ids + block, types + block_types
                if e.query.text:
                    written = text_ids(self.tokenizer, e.query.text)
                    ids, types = ids + written, types + [0] * len(written)
        context = self.tokenizer.encode(e.context, add_special_tokens=False) if e.context else []
        return ids + context, types + [0] * len(context)

    def image_block(self, grid: tuple[int, int, int]) -> tuple[list[int], list[int]]:
        t, h, w = grid
        n = t * h * w // self.processor.image_processor.merge_size**2
        return [self.vision_start, *[self.image_pad] * n, self.vision_end], [0, *[1] * n, 0]

    def injected(self, what: Side | str, grids: Any) -> tuple[list[int], list[int]]:
        """Ids and token types of one injection: the candidate's image block and text, then a newline; or a notice."""
        if isinstance(what, str):
            ids = self.tokenizer.encode(what, add_special_tokens=False)
            return ids, [0] * len(ids)
        ids, types = self.image_block(next(grids)) if what.image_path else ([], [])
        text = [
            *self.tokenizer.encode(what.text or "", add_special_tokens=False),
            *self.tokenizer.encode("\n", add_special_tokens=False),
        ]
        return ids + text, types + [0] * len(text)

    def __call__(self, examples: list[PretrainExample]) -> dict[str, Any] | None:
        import torch

        from retrv.images import load_image
        from retrv.scan import SkipFile

        kept: list[PretrainExample] = []
        prompts: list[str] = []
        images: list[list[Any]] = []  # PIL images per example, in prompt order
        looks: list[list[Any]] = []  # the images its inspections inject
        for e in examples:
            text, paths = self.prompt(e)
            inspected = [s.image_path for s in e.inspections if isinstance(s, Side) and s.image_path]
            if self.laid_out(e) and e.query.image_path:  # its query image comes first, in the prompt
                inspected.insert(0, e.query.image_path)
            try:
                opened = [load_image(p) for p in paths + inspected]
            except SkipFile as exc:
                self.issues.report(e.source, f"cannot read image: {exc}")
                continue
            kept.append(e)
            prompts.append(text)
            images.append(opened[: len(paths)])
            looks.append(opened[len(paths) :])
        if not kept:
            return None
        # One processor call for the whole batch (much faster than one per example); rows are cut back to
        # their own length, then each gets its answer appended.
        flat = [im for row in images for im in row]
        enc = self.processor(text=prompts, images=flat or None, padding=True, padding_side="right", return_tensors="pt")
        pixels = _per_image(enc, [len(row) for row in images])
        inspected = [im for row in looks for im in row]
        look_pixels = (
            _per_image(
                self.processor.image_processor(images=inspected, return_tensors="pt"), [len(row) for row in looks]
            )
            if inspected
            else [[] for _ in looks]
        )
        lengths = enc["attention_mask"].sum(1).tolist()
        types_all = enc.get("mm_token_type_ids", torch.zeros_like(enc["input_ids"]))
        rows = []
        for i, e in enumerate(kept):
            prompt_ids, types = enc["input_ids"][i, : lengths[i]].tolist(), types_all[i, : lengths[i]].tolist()
            answer, labels, answer_types = self.target(e, [tuple(g.tolist()) for _, g in look_pixels[i]])
            rows.append((prompt_ids + answer, types + answer_types, [IGNORE] * len(prompt_ids) + labels, e.kind))
        width = max(len(ids) for ids, _, _, _ in rows)
        pad = int(self.tokenizer.pad_token_id)
        batch = {
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _, _, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _, _ in rows]),
            "mm_token_type_ids": torch.tensor([t + [0] * (width - len(t)) for _, t, _, _ in rows]),
            "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, _, lab, _ in rows]),
            "is_pair": torch.tensor([k == "pair" for _, _, _, k in rows]),
            "is_text": torch.tensor([k == "text" for _, _, _, k in rows]),
            "answer_ids": torch.tensor([self.answers.yes_id, self.answers.no_id]),
            "images_per_row": torch.tensor([len(pixels[i]) + len(look_pixels[i]) for i in range(len(kept))]),
        }
        # the model fills image tokens in sequence order: each row's prompt images, then its inspections
        ordered = [image for i in range(len(kept)) for image in pixels[i] + look_pixels[i]]
        if ordered:
            batch["pixel_values"] = torch.cat([p for p, _ in ordered])
            batch["image_grid_thw"] = torch.stack([g for _, g in ordered])
        return batch


def _per_image(enc: Any, counts: list[int]) -> list[list[tuple[Any, Any]]]:
    """A processor's batched pixel_values / image_grid_thw cut back into (pixels, grid) per image, grouped by row."""
    if not sum(counts):
        return [[] for _ in counts]
    grids = enc["image_grid_thw"]
    pieces = list(zip(enc["pixel_values"].split(grids.prod(-1).tolist()), grids))
    out, start = [], 0
    for n in counts:
        out.append(pieces[start : start + n])
        start += n
    return out


LENGTH_BUCKET = 8  # rows per forward in `pretrain_loss`


def length_buckets(batch: dict[str, Any], size: int = LENGTH_BUCKET) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """The batch's rows, longest first, in groups of `size`, each group cut to its own width with its own images:
    (row indices, model inputs). Causal attention never lets a row's tokens see its right padding, so each row's
    logits are its logits in the whole batch; the padding it no longer carries (44% of a batch of the recipe's
    CoT texts) is compute saved, in attention quadratically (docs/benchmarks.md, 7)."""
    import torch

    lengths = batch["attention_mask"].sum(1)
    order = lengths.argsort(descending=True, stable=True).tolist()
    counts = batch.get("images_per_row")
    if "pixel_values" in batch and counts is None:  # images that cannot be told apart by row: one forward
        order, size = list(range(len(lengths))), len(lengths)
    if "pixel_values" in batch:
        grids = batch["image_grid_thw"]
        patches = batch["pixel_values"].split(grids.prod(-1).tolist())
        first = [0, *counts.cumsum(0).tolist()] if counts is not None else [0, len(patches)]
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        width = int(lengths[rows].max())
        inputs: dict[str, Any] = {
            k: batch[k][rows, :width] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in batch
        }
        if "pixel_values" in batch:
            images = (
                list(range(len(patches)))
                if counts is None
                else [i for r in rows for i in range(first[r], first[r + 1])]
            )
            if images:  # the model fills image tokens in sequence order: row by row, as the rows stand here
                inputs["pixel_values"] = torch.cat([patches[i] for i in images])
                inputs["image_grid_thw"] = grids[images]
        yield rows, inputs


def pretrain_loss(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-example mean cross-entropy on the answer tokens, averaged over the batch; caption and pair
    losses and the pair accuracy (P(yes) > P(no) on the right side) as metrics. The model runs on
    `length_buckets` of the batch."""
    import torch
    import torch.nn.functional as F

    losses: list[torch.Tensor] = []
    pair_rows: list[torch.Tensor] = []
    order: list[int] = []
    for rows, inputs in length_buckets(batch, LENGTH_BUCKET):
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        labels = batch["labels"][rows, 1 : inputs["input_ids"].shape[1]]
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        counted = (labels != IGNORE).float()
        losses.append((token_loss * counted).sum(1) / counted.sum(1).clamp(min=1))
        first = counted.argmax(1)  # the first answer position: a pair's Yes/No
        pair_rows.append(logits.detach()[torch.arange(len(rows)), first][:, batch["answer_ids"]])
        order += rows
    inverse = torch.tensor(order).argsort()
    per_example, pair_logits = torch.cat(losses)[inverse], torch.cat(pair_rows)[inverse]
    loss = per_example.mean()
    metrics: dict[str, float] = {}
    is_pair, is_text = batch["is_pair"], batch["is_text"]
    is_caption = ~is_pair & ~is_text
    with torch.no_grad():
        if is_caption.any():
            metrics["caption_loss"] = float(per_example.detach()[is_caption].mean())
        if is_text.any():
            metrics["text_loss"] = float(per_example.detach()[is_text].mean())
        if is_pair.any():
            labels = batch["labels"][is_pair, 1:]
            answered = labels[torch.arange(len(labels)), (labels != IGNORE).float().argmax(1)]
            said_yes = pair_logits[is_pair, 0] > pair_logits[is_pair, 1]
            metrics["pair_loss"] = float(per_example.detach()[is_pair].mean())
            metrics["pair_accuracy"] = float((said_yes == (answered == batch["answer_ids"][0])).float().mean())
    return loss, metrics


# ---------------------------------------------------------------- model


@dataclass
class BaseModel:
    model: Any
    tokenizer: Any
    image_processor: Any
    processor: Any


def build_base(config: PretrainConfig, corpus: list[str]) -> BaseModel:
    """A new random tiny Qwen2.5-VL fitted to `corpus` (or `config.base` loaded), float32 on the CPU."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from retrv.rerank.checkpoint import build_processor, quiet_transformers
    from retrv.rerank.patch_embedding import linear_patch_embeddings
    from retrv.train.random_models import build_random_vlm

    with tempfile.TemporaryDirectory(prefix="retrv-caption-") as tmp, quiet_transformers():
        source = Path(config.base) if config.base else Path(tmp)
        if not config.base:
            build_random_vlm(
                tmp,
                hidden=config.hidden,
                layers=config.layers,
                heads=config.heads,
                kv_heads=config.kv_heads,
                vision_hidden=config.vision_hidden,
                vision_depth=config.vision_depth,
                corpus=corpus,
                vocab_size=config.vocab_size,
                seed=config.seed,
                rope_theta=config.rope_theta,
                mrope_section=config.rope_sections(),
            )
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        image_processor = AutoImageProcessor.from_pretrained(str(source))
        model = AutoModelForImageTextToText.from_pretrained(str(source), dtype="float32", use_safetensors=True)
        linear_patch_embeddings(model)
    if not config.base:  # every image resized to about image_size^2 pixels, small ones scaled up
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        pixels = config.image_size * config.image_size
        image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels)
    processor = build_processor(model.config.model_type, image_processor, tokenizer)
    if processor is None:
        raise TrainConfigError(
            f"{config.base}: caption training needs a Qwen2-VL / Qwen2.5-VL model with an image processor"
        )
    return BaseModel(model, tokenizer, image_processor, processor)


def pretrain_vlm(config: PretrainConfig, progress: ProgressCallback | None = None) -> TrainSummary:
    """Pretrain a tiny VLM on `config.data`; write it to `config.out` (loadable as --reasoner OUT)."""
    config.validate()
    issues = DataIssues(progress)
    examples = load_examples(
        str(config.data),  # validated: given
        config.split,
        captions=config.captions,
        pairs=config.pairs,
        texts=config.texts,
        texts_file=config.texts_file,
        hard_negatives=config.hard_negatives,
        random_negatives=config.random_negatives,
        instructions=config.instructions,
        seed=config.seed,
        issues=issues,
    )
    counts = {kind: sum(e.kind == kind for e in examples) for kind in ("caption", "pair", "text")}
    emit(
        progress,
        "data",
        len(examples),
        len(examples),
        f"{counts['caption']} captions, {counts['pair']} pairs, {counts['text']} texts, {len(issues)} problems skipped",
    )
    base = build_base(config, world_corpus(examples, config.data))  # type: ignore[arg-type]
    model = base.model
    model.requires_grad_(True)
    collator = PretrainCollator(base.tokenizer, base.processor, issues, config.prompt_style, config.num_candidates)
    batches = ShuffledBatches(examples, config.batch_size, config.seed, collator)
    summary = train(model, pretrain_loss, batches, config, progress=progress, issues=issues)
    summary.examples = len(examples)

    save_pretrained_model(
        str(config.out),  # validated: given
        model,
        base.tokenizer,
        base.image_processor,
        {
            "stage": "caption",
            "config": asdict(config),
            "captions": counts["caption"],
            "pairs": counts["pair"],
            "texts": counts["text"],
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        summary,
    )
    out = Path(config.out)  # type: ignore[arg-type]
    emit(progress, "save", 1, 1, f"base reasoner saved to {out} (load it with --reasoner {out})")
    return summary
