"""`retrv train encoder`: contrastive fine-tuning of a CLIP/SigLIP dual encoder on M-BEIR-layout data.

Each training example is (query, one positive, up to `hard_negatives` negatives from `neg_cand_list`, in
file order); a query with several positives gives one example per positive. Queries and candidates may
be text, image or image+text; an image+text side is embedded exactly as retrieval embeds it
(`encoders.base.combine`: the normalised mean of its unit image and text vectors), and texts are tokenised
by the same `ClipEncoder` code the index uses, so training and search see identical inputs.

Loss (`--loss`), over a batch of B queries, their B positives and M hard negatives, with a learnable
temperature (the model's own `logit_scale`, clamped to 100 as in CLIP):
- `infonce` (default, for CLIP and SigLIP alike): symmetric cross-entropy, query->[positives; negatives]
  plus positive->queries, as CLIP trains. SigLIP was trained with a sigmoid loss, but the softmax loss
  fine-tunes it well too; its `logit_bias` has no gradient under a softmax and is therefore frozen.
- `sigmoid`: SigLIP's pairwise loss, -mean_i Σ_j log σ(z_ij (t·q_i·c_j + b)), z = +1 on pairs, -1 elsewhere.
In-batch "negatives" that are in fact the same candidate as a query's positive are masked out.

The output directory loads as `--encoder clip:OUT`: `save_pretrained` (safetensors) + tokenizer + image
processor, next to `checkpoints/`, `metrics.jsonl` and `retrv-train.json` (the config and summary).
Multi-GPU: `accelerate launch -m retrv.cli.app train encoder ...`; each process uses its own batches as
in-batch negatives (no cross-process gather).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import DataError
from retrv.progress import ProgressCallback, emit
from retrv.train.config import EncoderTrainConfig
from retrv.train.loop import DataIssues, ShuffledBatches, TrainSummary, save_pretrained_model, train

if TYPE_CHECKING:
    import torch

    from retrv.encoders.clip import ClipEncoder


@dataclass(frozen=True)
class Side:
    """One query or candidate as the encoder sees it; `source` ("file:line") names it in reports."""

    key: str  # qid or did
    text: str | None
    image_path: str | None
    source: str


@dataclass(frozen=True)
class ContrastivePair:
    query: Side
    positive: Side
    negatives: tuple[Side, ...] = ()


def load_pairs(
    root: str | Path,
    split: str = "train",
    pool: str = "local",
    hard_negatives: int = 1,
    issues: DataIssues | None = None,
) -> list[ContrastivePair]:
    """Every (query, positive, hard negatives) example of an M-BEIR split; bad lines are reported and skipped.

    Skipped with a report naming file and line: malformed JSON or fields, a missing image file, a positive
    that is not in the pool. Negatives not in the pool (or with a missing image) are dropped with a report.
    """
    from retrv.data.mbeir import MBeirDataset, parse_candidate, parse_query, parsed_lines

    issues = issues if issues is not None else DataIssues()
    ds = MBeirDataset.open(root, split)
    pools: dict[Path, dict[str, Side]] = {}

    def read_pool(path: Path, dataset: str) -> dict[str, Side]:
        if path not in pools:
            found: dict[str, Side] = {}
            parse = partial(parse_candidate, root=ds.root, dataset=dataset)
            for where, c in parsed_lines(path, ds.root, parse, issues.report):
                found.setdefault(c.did, Side(c.did, c.text, c.image_path, where))
            pools[path] = found
        return pools[path]

    def usable(side: Side) -> bool:
        if side.image_path is not None and not Path(side.image_path).is_file():
            issues.report(side.source, f"image not found: {side.image_path}")
            return False
        return True

    pairs: list[ContrastivePair] = []
    for dataset in ds.datasets:
        candidates = read_pool(ds.pool_file(None if pool == "global" else dataset, pool), dataset)
        parse = partial(parse_query, root=ds.root, dataset=dataset, split=split)
        for where, q in parsed_lines(ds.query_file(dataset), ds.root, parse, issues.report):
            query = Side(q.qid, q.text, q.image_path, where)
            if not usable(query):
                continue
            negatives = []
            for did in q.neg[:hard_negatives]:
                if did not in candidates:
                    issues.report(where, f"negative {did} is not in the {pool} pool; dropped")
                elif usable(candidates[did]):
                    negatives.append(candidates[did])
            positives = [d for d in q.pos if d in candidates]
            if not positives:
                issues.report(
                    where, f"no positive of {q.qid} ({', '.join(q.pos) or 'none listed'}) is in the {pool} pool"
                )
            for did in positives:
                if usable(candidates[did]):
                    pairs.append(ContrastivePair(query, candidates[did], tuple(negatives)))
    if not pairs:
        raise DataError(
            f"{ds.root}: no usable training pairs in the {split} split"
            + (f" ({len(issues)} problems reported)" if len(issues) else "")
        )
    return pairs


class ContrastiveCollator:
    """A list of pairs -> one batch of tensors: every distinct side once, texts tokenised, images preprocessed.

    Layout of the sides: queries [0, B), positives [B, 2B), hard negatives after. A pair whose query or
    positive image cannot be decoded is dropped (reported); so is an undecodable negative.
    """

    def __init__(self, encoder: ClipEncoder, issues: DataIssues) -> None:
        self.encoder, self.issues = encoder, issues

    def _pixels(self, side: Side) -> Any:
        from retrv.images import load_image
        from retrv.scan import SkipFile

        assert side.image_path is not None
        try:
            return self.encoder.preprocess(load_image(side.image_path))
        except SkipFile as e:
            self.issues.report(side.source, f"cannot read image {side.image_path}: {e}")
            return None

    def __call__(self, pairs: list[ContrastivePair]) -> dict[str, Any] | None:
        import torch

        pixels: dict[Side, Any] = {}

        def ok(side: Side) -> bool:
            if side.image_path is None:
                return True
            if side not in pixels:
                pixels[side] = self._pixels(side)
            return pixels[side] is not None

        kept = [p for p in pairs if ok(p.query) and ok(p.positive)]
        if len(kept) < 2:  # one pair has no negatives in the batch: nothing to contrast
            return None
        negatives = [n for p in kept for n in p.negatives if ok(n)]
        sides = [p.query for p in kept] + [p.positive for p in kept] + negatives
        texts = [s.text for s in sides if s.text is not None]
        text_index = torch.full((len(sides),), -1, dtype=torch.long)
        image_index = torch.full((len(sides),), -1, dtype=torch.long)
        images: list[Any] = []
        t = 0
        for i, s in enumerate(sides):
            if s.text is not None:
                text_index[i], t = t, t + 1
            if s.image_path is not None:
                image_index[i] = len(images)
                images.append(pixels[s])
        # Integer ids of the candidates, so the loss can mask a "negative" that is some query's own positive.
        ids: dict[str, int] = {}
        cand_keys = torch.tensor([ids.setdefault(s.key, len(ids)) for s in sides[len(kept) :]], dtype=torch.long)
        batch: dict[str, Any] = {
            "text_index": text_index,
            "image_index": image_index,
            "cand_keys": cand_keys,
            "n_queries": torch.tensor(len(kept)),
        }
        if texts:
            batch.update(self.encoder._tokenize(texts))
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch


def _features(output: Any) -> torch.Tensor:
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def embed_sides(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """(n_sides, dim) unit vectors: text, image, or the normalised mean of both (encoders.base.combine)."""
    import torch
    import torch.nn.functional as F

    text_index, image_index = batch["text_index"], batch["image_index"]
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows of each side, index into them)
    if "input_ids" in batch:
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        parts.append((F.normalize(_features(model.get_text_features(**kwargs)).float(), dim=-1), text_index))
    if "pixel_values" in batch:
        pixel_values = batch["pixel_values"].to(next(model.parameters()).dtype)
        parts.append(
            (F.normalize(_features(model.get_image_features(pixel_values=pixel_values)).float(), dim=-1), image_index)
        )
    total = torch.zeros(len(text_index), parts[0][0].shape[-1], device=parts[0][0].device)
    for rows, index in parts:
        has = index >= 0
        total = total.index_add(0, has.nonzero().squeeze(1), rows[index[has]])
    return F.normalize(total, dim=-1)  # a fused side is (img + txt), which normalises like 0.5·img + 0.5·txt


def contrastive_loss(model: Any, batch: dict[str, Any], kind: str = "infonce") -> tuple[torch.Tensor, dict[str, float]]:
    """The step function: loss over queries x [positives; hard negatives], plus accuracy and temperature."""
    import torch
    import torch.nn.functional as F

    emb = embed_sides(model, batch)
    b = int(batch["n_queries"])
    queries, cands = emb[:b], emb[b:]
    scale = model.logit_scale.exp().clamp(max=100.0)
    logits = scale * queries @ cands.T  # (B, B + M)
    keys = batch["cand_keys"]
    same = keys[None, :] == keys[:b, None]  # candidate j is query i's positive (by id)
    false_negative = same & ~torch.eye(b, len(keys), dtype=torch.bool, device=keys.device)
    targets = torch.arange(b, device=emb.device)
    if kind == "infonce":
        logits = logits.masked_fill(false_negative, float("-inf"))
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits[:, :b].T, targets)) / 2
    elif kind == "sigmoid":
        bias = getattr(model, "logit_bias", None)
        z = logits + (bias if bias is not None else 0.0)
        labels = torch.where(same, 1.0, -1.0)
        valid = ~false_negative
        loss = -(F.logsigmoid(labels * z) * valid).sum() / b
    else:
        raise ValueError(f"unknown contrastive loss {kind!r}")
    with torch.no_grad():
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
    return loss, {"accuracy": float(accuracy), "temperature": float(1.0 / scale.detach())}


def load_base(config: EncoderTrainConfig) -> ClipEncoder:
    """The base encoder, float32 on the CPU (the loop moves the model to its device)."""
    from retrv.encoders.clip import load_clip_encoder
    from retrv.encoders.registry import parse_encoder_spec

    base = str(config.base)
    spec = parse_encoder_spec(base if base.startswith("clip:") else f"clip:{base}")
    return load_clip_encoder(spec.ref, spec=str(spec), device="cpu", half=False)


def set_trainable(model: Any, config: EncoderTrainConfig) -> None:
    """Freeze what the config asks; the temperature follows --learn-temperature; SigLIP's bias is frozen
    under InfoNCE (a softmax is blind to a shared offset, so it would get no gradient)."""
    model.requires_grad_(True)
    if config.freeze_vision:
        model.vision_model.requires_grad_(False)
        if hasattr(model, "visual_projection"):
            model.visual_projection.requires_grad_(False)
    if config.freeze_text:
        model.text_model.requires_grad_(False)
        if hasattr(model, "text_projection"):
            model.text_projection.requires_grad_(False)
    model.logit_scale.requires_grad_(config.learn_temperature)
    if getattr(model, "logit_bias", None) is not None:
        model.logit_bias.requires_grad_(config.loss == "sigmoid" and config.learn_temperature)


def train_encoder(config: EncoderTrainConfig, progress: ProgressCallback | None = None) -> TrainSummary:
    """Fine-tune `config.base` on `config.data`; write the model to `config.out` (loadable as clip:OUT)."""
    config.validate()
    issues = DataIssues(progress)
    pairs = load_pairs(config.data, config.split, config.pool, config.hard_negatives, issues)  # type: ignore[arg-type]
    emit(progress, "data", len(pairs), len(pairs), f"{len(pairs)} training pairs, {len(issues)} problems skipped")
    encoder = load_base(config)
    model = encoder.model
    set_trainable(model, config)
    batches = ShuffledBatches(pairs, config.batch_size, config.seed, ContrastiveCollator(encoder, issues))

    def step(m: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        return contrastive_loss(m, batch, config.loss)

    summary = train(model, step, batches, config, progress=progress, issues=issues)
    summary.examples = len(pairs)
    save_pretrained_model(
        str(config.out),  # validated: given
        model,
        encoder.tokenizer,
        encoder.image_processor,
        {"stage": "encoder", "config": asdict(config)},
        summary,
    )
    out = Path(config.out)  # type: ignore[arg-type]
    emit(progress, "save", 1, 1, f"encoder saved to {out} (load it with --encoder clip:{out})")
    return summary
