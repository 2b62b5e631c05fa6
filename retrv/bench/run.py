"""`retrv bench mbeir`: the Engine over every query of an M-BEIR-layout dataset, scored as UniIR does.

Each pool gets its own index (cached under the user data dir, keyed by dataset path, split, pool and
encoder, and built incrementally, so a second bench reuses it). Rankings go to a TREC run file as they
are made; an interrupted bench started again with the same run file skips the queries already in it.
Cost figures (latency per stage, tokens, inspections, peak memory) cover the queries run this time.
"""

from __future__ import annotations

import hashlib
import resource
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrv.errors import UsageError
from retrv.progress import ProgressCallback, emit

if TYPE_CHECKING:
    from retrv.bench.metrics import MetricsReport
    from retrv.config import Settings
    from retrv.data.mbeir import MBeirDataset, MBeirQuery
    from retrv.encoders.base import Encoder
    from retrv.index.build import EncodeStep
    from retrv.index.index import Index
    from retrv.rerank.base import Reranker


@dataclass
class BenchConfig:
    """What `retrv bench mbeir` runs. The encoder, device, reranker and their limits come from `Settings`."""

    data: Path
    split: str = "test"
    datasets: list[str] | None = None  # dataset names ("synth_task0") or task ids as strings ("0"); None = all
    pool: str = "local"
    k: int = 50
    instructions: bool = True
    limit: int | None = None  # queries per dataset
    run_file: Path | None = None
    index_dir: Path | None = None
    force_answer: bool = False
    encode: EncodeStep | None = None  # how pools are encoded (None: in this process; or on Ray, `--ray`)


@dataclass
class BenchResult:
    metrics: MetricsReport
    cost: dict[str, Any]
    run_file: Path | None
    queries_run: int
    queries_resumed: int
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics.to_dict(),
            "cost": self.cost,
            "run_file": str(self.run_file) if self.run_file else None,
            "queries_run": self.queries_run,
            "queries_resumed": self.queries_resumed,
            "config": self.config,
        }


def pool_index_dir(config: BenchConfig, encoder_spec: str, pool_name: str) -> Path:
    from retrv.config import data_dir

    key = f"{config.data.resolve()}|{config.split}|{pool_name}|{encoder_spec}"
    slug = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    base = config.index_dir or data_dir() / "bench-indexes"
    return Path(base) / f"{pool_name}-{slug}"


def _selected(ds: MBeirDataset, wanted: list[str] | None) -> list[str]:
    if not wanted:
        return ds.datasets
    names = []
    for w in wanted:
        match = [n for n in ds.datasets if n == w or n.endswith(f"_task{w}")]
        if not match:
            raise UsageError(f"no dataset or task {w!r} in {ds.root} (have: {', '.join(ds.datasets)})")
        names += [n for n in match if n not in names]
    return names


def run_mbeir(
    config: BenchConfig,
    settings: Settings | None = None,
    *,
    progress: ProgressCallback | None = None,
    notify: Callable[[str], None] | None = None,
    reranker: Reranker | None = None,
    encoder: Encoder | None = None,
) -> BenchResult:
    """The engine `settings` describe (its encoder, reranker and their limits) over every query of the dataset;
    `reranker` and `encoder`, when given, are used instead of loading the ones the settings name."""
    from retrv.bench.metrics import RunWriter, evaluate, filter_positives, read_run, run_rankings
    from retrv.config import load_settings
    from retrv.data.mbeir import MBeirDataset
    from retrv.encoders.registry import load_encoder
    from retrv.engine import Engine, reranker_from_settings

    settings = settings or load_settings()
    if config.pool not in ("local", "global"):
        raise UsageError(f"pool is local or global, got {config.pool!r}")
    ds = MBeirDataset.open(config.data, config.split)
    names = _selected(ds, config.datasets)
    encoder = encoder or load_encoder(settings.encoder, device=settings.device, notify=notify)
    if reranker is None:
        reranker = reranker_from_settings(settings, force_answer=config.force_answer, notify=notify)
    mode = reranker.mode if reranker is not None else "none"
    done: dict[str, list[str]] = {}
    if config.run_file is not None and config.run_file.exists():
        done = run_rankings(read_run(config.run_file, repair=True))
    writer = RunWriter(config.run_file, run_name=f"retrv-{mode}") if config.run_file else None
    rankings: dict[str, list[str]] = dict(done)
    all_queries: list[MBeirQuery] = []
    latencies: dict[str, list[float]] = {}
    prompt_tokens: list[int] = []
    generated_tokens: list[int] = []
    inspections: list[int] = []
    fallbacks: Counter[str] = Counter()
    forced = run = 0
    try:
        for name in names:
            queries = list(ds.queries(dataset=name))[: config.limit]
            all_queries += queries
            todo = [q for q in queries if q.qid not in done]
            if not todo:
                continue
            pool_name = "global" if config.pool == "global" else name
            index = _pool_index(ds, config, settings, encoder, name, pool_name, progress)
            engine = Engine(index, reranker, rerank_k=settings.rerank_k)
            modality_of = _candidate_modalities(ds, config.pool, name)
            for n, q in enumerate(todo):
                positives = filter_positives(q.qid, q.pos)
                cand_modality = next((modality_of[p] for p in positives if p in modality_of), None)
                instruction = (
                    ds.instruction(name, q.modality, cand_modality) if config.instructions and cand_modality else None
                )
                ranking = engine.search(q.to_query(instruction), k=config.k)
                ranked = [(h.id, h.score) for h in ranking.hits]
                rankings[q.qid] = [did for did, _ in ranked]
                if writer is not None:
                    writer.write(q.qid, ranked)
                for stage, ms in ranking.latency_ms.items():
                    latencies.setdefault(stage, []).append(ms)
                prompt_tokens.append(ranking.prompt_tokens)
                generated_tokens.append(ranking.generated_tokens)
                inspections.append(len(ranking.inspected))
                if ranking.fallback is not None:
                    fallbacks[ranking.fallback] += 1
                forced += ranking.forced_answer
                run += 1
                emit(progress, f"queries {name}", n + 1, len(todo))
    finally:
        if writer is not None:
            writer.close()
    metrics = evaluate(rankings, all_queries)
    cost = _cost(latencies, prompt_tokens, generated_tokens, inspections, fallbacks, forced, run)
    described = {
        "data": str(config.data),
        "split": config.split,
        "pool": config.pool,
        "k": config.k,
        "rerank": mode,
        "encoder": encoder.spec,
        "reasoner": settings.reasoner if reranker is not None else None,
        "instructions": config.instructions,
        "limit": config.limit,
    }
    resumed = len([q for q in all_queries if q.qid in done])
    return BenchResult(metrics, cost, config.run_file, run, resumed, config=described)


def _pool_index(
    ds: MBeirDataset,
    config: BenchConfig,
    settings: Settings,
    encoder: Encoder,
    name: str,
    pool_name: str,
    progress: ProgressCallback | None,
) -> Index:
    from retrv.index.index import Index

    root = pool_index_dir(config, encoder.spec, pool_name)
    index = Index.open(root, create=True, encoder=encoder, device=settings.device, exact_max=settings.exact_search_max)
    dataset = None if config.pool == "global" else name
    items = [c.to_item() for c in ds.candidates(pool=config.pool, dataset=dataset)]
    index.add_items(
        items,
        batch_size=settings.batch_size,
        loader_threads=settings.loader_threads,
        max_megapixels=settings.max_megapixels,
        max_text_bytes=settings.max_text_bytes,
        encode=config.encode,
        progress=_prefixed(progress, f"index {pool_name}"),
    )
    return index


def _candidate_modalities(ds: MBeirDataset, pool: str, name: str) -> dict[str, str]:
    dataset = None if pool == "global" else name
    return {c.did: c.modality for c in ds.candidates(pool=pool, dataset=dataset)}


def _prefixed(progress: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda event: emit(progress, stage, event.done, event.total, event.message)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _cost(
    latencies: dict[str, list[float]],
    prompt: list[int],
    generated: list[int],
    inspections: list[int],
    fallbacks: Counter[str],
    forced: int,
    run: int,
) -> dict[str, Any]:
    def mean(xs: list[int]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    cost = {
        "queries": run,
        "latency_ms": {
            stage: {"p50": _percentile(v, 0.5), "p95": _percentile(v, 0.95)} for stage, v in sorted(latencies.items())
        },
        "prompt_tokens_mean": mean(prompt),
        "generated_tokens_mean": mean(generated),
        "inspections_mean": mean(inspections),
        "fallbacks": sum(fallbacks.values()),
        "fallback_reasons": dict(fallbacks.most_common()),  # why the coarse order stood, e.g. the token cap
        "forced_answers": forced,  # queries whose answer was forced after the reasoner stopped unanswered
        "peak_rss_bytes": peak_bytes,
    }
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        cost["peak_cuda_bytes"] = int(sys.modules["torch"].cuda.max_memory_allocated())
    return cost
