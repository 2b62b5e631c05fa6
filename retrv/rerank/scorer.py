"""`score` mode: training-free pointwise reranking with any instruct VLM, in two published styles.

`lamra` (LamRA's pointwise rerank, the default): for each (query, candidate) the reasoner reads one prompt
(`prompts.score_segments`: query, candidate, "Does the candidate match the query? Answer Yes or No.") and we
read the next-token logits at the last position:

    p    = softmax(logit[yes], logit[no])[yes]          the rerank score, a probability in [0, 1]
    conf = 1 - H(p, 1 - p) / log 2                      1 = certain, 0 = a coin flip
    fused = coarse + fusion_weight * p                  the final order; ties broken by conf

`retllm` (RetLLM): the prompt asks "Does the image match the caption ...? Please output True or False."
(`prompts.retllm_segments`, with a composed variant), and

    p    = softmax(logits)[True], over the whole vocabulary, truncated to 2 decimals: the score and the order
    H    = the entropy of that distribution: among equal scores the lower H ranks first (conf = 1 - H / log V)

with no fusion with the coarse score. `visual_retracing` (RetLLM's MemVR-style FFN augmentation,
`rerank/retracing.py`) may run inside either style's forward.

Candidates are batched (right padding; each row's logit is taken at its own last real position, so a
batch computes what one-by-one calls compute). The answer tokens are found in context: the token the
tokenizer produces for "Yes" right after the prompt's assistant prefix (with or without a leading
space, whichever the tokenizer actually emits there); if "Yes"/"No" are not single tokens,
"True"/"False" are used (and the prompt asks for them).
A candidate whose image cannot be read gets no score (None) and is ranked after the scored ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retrv.config import SCORE_STYLES
from retrv.errors import ScoreError, UsageError
from retrv.images import load_image
from retrv.rerank.base import Candidate, RerankResult
from retrv.rerank.prompts import SCORE_SYSTEM, render, retllm_segments, score_segments
from retrv.rerank.retracing import RetracingConfig, check_retracing, visual_retracing
from retrv.scan import SkipFile

if TYPE_CHECKING:
    from retrv.items import Query
    from retrv.rerank.checkpoint import LoadedReasoner

DEFAULT_FUSION_WEIGHT = 1.0
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_TEXT_TOKENS = 256
ANSWER_PAIRS = (("Yes", "No"), ("True", "False"))


@dataclass(frozen=True)
class AnswerTokens:
    yes: str
    no: str
    yes_id: int
    no_id: int


def _answer_token_id(tokenizer: Any, prefix: str, word: str) -> int | None:
    """The single token `word` becomes right after `prefix`, else of `word` / `" " + word` alone."""
    base = tokenizer.encode(prefix, add_special_tokens=False)
    full = tokenizer.encode(prefix + word, add_special_tokens=False)
    if len(full) == len(base) + 1 and full[: len(base)] == base:
        return int(full[-1])
    for variant in (word, " " + word):
        ids = tokenizer.encode(variant, add_special_tokens=False)
        if len(ids) == 1:
            return int(ids[0])
    return None


def pick_answer_tokens(tokenizer: Any, prefix: str, pairs: tuple[tuple[str, str], ...] = ANSWER_PAIRS) -> AnswerTokens:
    """Yes/No (or True/False) token ids as the model would write them after `prefix`."""
    for yes, no in pairs:
        yes_id, no_id = _answer_token_id(tokenizer, prefix, yes), _answer_token_id(tokenizer, prefix, no)
        if yes_id is not None and no_id is not None and yes_id != no_id:
            return AnswerTokens(yes, no, yes_id, no_id)
    words = " or ".join(f"{yes}/{no}" for yes, no in pairs)
    other = "; try --score-style lamra (Yes/No)" if pairs == (("True", "False"),) else ""
    raise ScoreError(
        f"the reasoner's tokenizer has no single token for {words}; score mode cannot read an answer{other}",
        setting="score_style" if other else None,
    )


def normalised_confidence(p_yes: np.ndarray) -> np.ndarray:
    """1 - binary entropy / log 2, elementwise."""
    p = np.clip(p_yes.astype(np.float64), 1e-12, 1 - 1e-12)
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return 1.0 - entropy / math.log(2)


class Scorer:
    """The `score` reranker. `fusion_weight` (w) weighs P(yes) against the coarse score: coarse + w*P(yes)."""

    mode = "score"
    calibrated = True  # P(yes) is a probability: --min-score applies to it
    precomputed_table = None  # nothing is precomputed: each (query, candidate) pair is one forward pass

    def __init__(
        self,
        reasoner: LoadedReasoner,
        *,
        style: str = "lamra",
        fusion_weight: float = DEFAULT_FUSION_WEIGHT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
        system: str | None = SCORE_SYSTEM,
        retracing: RetracingConfig | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if style not in SCORE_STYLES:
            raise UsageError(f"score style must be one of {', '.join(SCORE_STYLES)}, got {style!r}")
        self.reasoner = reasoner
        self.style = style
        self.fusion_weight = float(fusion_weight)
        self.batch_size = int(batch_size)
        self.max_text_tokens = int(max_text_tokens)
        self.system = system
        check_retracing(reasoner.model, retracing)
        self.retracing = retracing
        probe = render([], reasoner.tokenizer, reasoner.processor, system=system)
        pairs = (("True", "False"),) if style == "retllm" else ANSWER_PAIRS
        self.answers = pick_answer_tokens(reasoner.tokenizer, probe, pairs)

    # ---------------------------------------------------------------- prompts

    def _truncate(self, text: str | None) -> str | None:
        if not text:
            return text
        tok = self.reasoner.tokenizer
        ids = tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= self.max_text_tokens else tok.decode(ids[: self.max_text_tokens])

    def prompt(self, query: Query, candidate: Candidate, *, with_image: bool = True) -> str:
        """The exact prompt string of one pair (images as placeholders)."""
        item = candidate.item
        if self.style == "retllm":
            segments = retllm_segments(
                query_text=self._truncate(query.text),
                query_image=query.image is not None,
                candidate_text=self._truncate(item.text),
                candidate_image=with_image and item.image_path is not None,
            )
            return render(segments, self.reasoner.tokenizer, self.reasoner.processor, system=self.system)
        segments = score_segments(
            query_text=self._truncate(query.text),
            query_image=query.image is not None,
            candidate_text=self._truncate(item.text),
            candidate_image=with_image and item.image_path is not None,
            answers=(self.answers.yes, self.answers.no),
            task=query.instruction,
        )
        return render(segments, self.reasoner.tokenizer, self.reasoner.processor, system=self.system)

    def encode(self, prompts: list[str], images: list[Any]) -> dict[str, Any]:
        """Tokenise a batch (right padding); `images` are in prompt order, flattened."""
        r = self.reasoner
        if r.processor is not None:
            batch = r.processor(
                text=prompts, images=images or None, padding=True, padding_side="right", return_tensors="pt"
            )
        elif images:
            raise ScoreError("this reasoner has no image processor, so it cannot score images")
        else:
            batch = r.tokenizer(prompts, padding=True, padding_side="right", return_tensors="pt")
        return {k: v.to(r.device) for k, v in batch.items()}

    # ---------------------------------------------------------------- scoring

    def score(self, query: Query, candidates: list[Candidate]) -> tuple[list[float | None], list[float | None], int]:
        """The score and confidence per candidate (None where its image could not be read; the module doc says
        what they are in each style), and the prompt tokens."""
        import torch

        query_images = []
        if query.image is not None:
            try:
                query_images = [load_image(str(query.image))]
            except SkipFile as exc:
                raise ScoreError(f"{query.image}: cannot read the query image ({exc})") from None
        rows: list[tuple[int, str, list[Any]]] = []
        for index, cand in enumerate(candidates):
            images = list(query_images)
            if cand.item.image_path is not None:
                try:
                    images.append(load_image(cand.item.image_path))
                except SkipFile:
                    if not cand.item.text:
                        continue  # nothing left to judge: no score
                    rows.append((index, self.prompt(query, cand, with_image=False), images))
                    continue
            rows.append((index, self.prompt(query, cand), images))

        p_yes: list[float | None] = [None] * len(candidates)
        conf: list[float | None] = [None] * len(candidates)
        prompt_tokens = 0
        model = self.reasoner.model
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch = self.encode([p for _, p, _ in chunk], [im for _, _, ims in chunk for im in ims])
            mask = batch["attention_mask"]
            last = (mask.sum(1) - 1).long()
            prompt_tokens += int(mask.sum())
            with torch.inference_mode(), visual_retracing(model, self.retracing):
                out = model(**batch, logits_to_keep=last[:, None], use_cache=False)
            scores, confidences = self._read(out.logits[:, 0].float())
            for (index, _, _), p, c in zip(chunk, scores, confidences, strict=True):
                p_yes[index], conf[index] = float(p), float(c)
        return p_yes, conf, prompt_tokens

    def _read(self, logits: Any) -> tuple[np.ndarray, np.ndarray]:
        """(scores, confidences) from the (B, V) next-token logits, as the style says (module doc)."""
        import torch

        if self.style == "lamra":
            pair = logits[:, [self.answers.yes_id, self.answers.no_id]]
            probs = torch.softmax(pair, dim=-1)[:, 0].cpu().numpy().astype(np.float64)
            return probs, normalised_confidence(probs)
        logp = torch.log_softmax(logits.double(), dim=-1)
        p_true = logp[:, self.answers.yes_id].exp().cpu().numpy()
        entropy = -(logp.exp() * logp).sum(-1).cpu().numpy()
        return np.floor(p_true * 100.0) / 100.0, 1.0 - entropy / math.log(logits.shape[-1])

    def rerank(self, query: Query, candidates: list[Candidate]) -> RerankResult:
        started = time.perf_counter()
        p_yes, conf, prompt_tokens = self.score(query, candidates)
        if self.style == "retllm":  # the score alone orders, ties by the lower entropy; unscored ones last
            fused = [p if p is not None else 0.0 for p in p_yes]
        else:
            fused = [
                c.coarse_score + self.fusion_weight * p if p is not None else float(c.coarse_score)
                for c, p in zip(candidates, p_yes, strict=True)
            ]
        order = fusion_order(fused, conf)
        return RerankResult(
            order=order,
            scores=fused,
            rerank_scores=p_yes,
            confidences=conf,
            prompt_tokens=prompt_tokens,
            latency_ms={"total": (time.perf_counter() - started) * 1000.0},
        )


def fusion_order(fused: list[float], confidences: list[float | None]) -> list[int]:
    """Best first: scored candidates by fused score, ties by confidence, then input order; unscored last."""
    scored = [i for i, c in enumerate(confidences) if c is not None]
    unscored = [i for i, c in enumerate(confidences) if c is None]
    scored.sort(key=lambda i: (-fused[i], -(confidences[i] or 0.0), i))
    unscored.sort(key=lambda i: (-fused[i], i))
    return scored + unscored
