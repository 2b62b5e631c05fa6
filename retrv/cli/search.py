"""`retrv search QUERY`: text, image or composed queries; coarse top-K, then optional reranking."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import (
    MODE_FLAGS,
    AnnMemoryOption,
    CandidateTokensOption,
    DeviceOption,
    ForceAnswerOption,
    FusionWeightOption,
    GlanceImageTokensOption,
    GlanceTextTokensOption,
    IndexOption,
    JsonOption,
    MaxInspectionsOption,
    MaxNewTokensOption,
    QuietOption,
    ReasonerOption,
    RerankKOption,
    RerankMode,
    ScoreStyleOption,
    StorageOptionsOption,
    TokenOption,
    TrustRemoteCodeOption,
    VisualRetracingOption,
    handle_errors,
    notice,
    print_json,
    settings_from_flags,
    silence_library,
    stage2_settings,
    warn,
)


class ModalityChoice(str, Enum):
    image = "image"
    text = "text"
    image_text = "image,text"


class PreviewProtocol(str, Enum):
    auto = "auto"
    kitty = "kitty"
    iterm2 = "iterm2"
    sixel = "sixel"


@handle_errors
def search(
    ctx: typer.Context,
    query: Annotated[
        str | None,
        typer.Argument(metavar="QUERY", help="Words to search for, or the path of an image.", show_default=False),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", metavar="PATH", help="Query image (with QUERY: a composed image+text query)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Number of results.")] = 10,
    index: IndexOption = None,
    add: Annotated[
        list[str] | None,
        typer.Option("--add", metavar="TEXT|IMAGE", help="Add words or an image to the query vector (repeatable)."),
    ] = None,
    subtract: Annotated[
        list[str] | None,
        typer.Option(
            "--subtract", metavar="TEXT|IMAGE", help="Subtract words or an image from the query vector (repeatable)."
        ),
    ] = None,
    rerank: Annotated[
        RerankMode | None,
        typer.Option(
            envvar="RETRV_RERANK",
            help="Stage 2: none, score (training-free) or reason (Retrv-R1). Default: score with a reasoner, else none.",
        ),
    ] = None,
    no_rerank: Annotated[bool, typer.Option("--no-rerank", help="Same as --rerank none.")] = False,
    reasoner: ReasonerOption = None,
    rerank_k: RerankKOption = None,
    fusion_weight: FusionWeightOption = None,
    max_inspections: MaxInspectionsOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    force_answer: ForceAnswerOption = False,
    candidate_tokens: CandidateTokensOption = None,
    glance_image_tokens: GlanceImageTokensOption = None,
    glance_text_tokens: GlanceTextTokensOption = None,
    score_style: ScoreStyleOption = None,
    visual_retracing: VisualRetracingOption = None,
    under: Annotated[
        list[Path] | None,
        typer.Option("--under", metavar="DIR", help="Only items at or below this folder (repeatable: any of them)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="DATE",
            help="Only items made on or after DATE (2024-05-01, 2024-05, 2024, or 30d / 6w ago): the photo's EXIF "
            "date, else the file's modification time.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="Only items made on or before DATE (a month or year: all of it)."),
    ] = None,
    modality: Annotated[
        ModalityChoice | None,
        typer.Option(
            help="Only items of this modality, as stored: image (photos), text (documents) or image,text (dataset "
            "items with both)."
        ),
    ] = None,
    all_copies: Annotated[
        bool,
        typer.Option(
            "--all-copies", help="Show every copy of a file (by default items with the same content show once)."
        ),
    ] = False,
    dedup: Annotated[
        float | None,
        typer.Option(
            metavar="SIM",
            help="Also fold near-duplicates: items whose cosine similarity to a better result is at least SIM "
            "(e.g. 0.97).",
        ),
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Show thumbnails in the terminal (kitty, iTerm2 or sixel).")
    ] = False,
    preview_protocol: Annotated[
        PreviewProtocol,
        typer.Option(
            help="How --preview draws: auto (detect from the terminal), kitty, iterm2 or sixel (implies --preview)."
        ),
    ] = PreviewProtocol.auto,
    min_score: Annotated[
        float | None,
        typer.Option(
            metavar="S",
            help="Drop results below S: P(yes) in score mode, the coarse cosine otherwise (reason mode's pick is not "
            "a score); says 'no match' when none is left.",
        ),
    ] = None,
    show_reasoning: Annotated[
        bool, typer.Option("--show-reasoning", help="Print the reasoner's reasoning (inspected candidates marked).")
    ] = False,
    encoder: Annotated[
        str | None,
        typer.Option(metavar="SPEC", help="Refuse to search unless the index was built with this encoder."),
    ] = None,
    device: DeviceOption = None,
    storage_options: StorageOptionsOption = None,
    ann_memory: AnnMemoryOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    paths_only: Annotated[
        bool, typer.Option("--paths-only", "-f", help="Print only paths, one per line (for xargs).")
    ] = False,
    null: Annotated[
        bool, typer.Option("--null", "-0", help="Print only paths, each ended by a NUL byte (for xargs -0).")
    ] = False,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            metavar="URL",
            envvar="RETRV_SERVER",
            help="Send the query to a running `retrv serve` at URL (its warm models answer; same output). "
            "--server '' searches locally.",
        ),
    ] = None,
    token: TokenOption = None,
) -> None:
    """Search an index with words, an image, or both."""
    import dataclasses

    from retrv.cli.render import preview_protocol_for, render_previews, render_ranking, report_on_stderr
    from retrv.errors import UsageError
    from retrv.index.filters import SearchFilter
    from retrv.items import Ranking, parse_query

    silence_library(quiet)
    settings = settings_from_flags(
        ctx,
        index=index,
        device=device,
        server=server,
        storage_options=storage_options,
        ann_memory=ann_memory,
        **stage2_settings(ctx),
    )
    if no_rerank:
        settings = dataclasses.replace(settings, rerank="none", origins={**settings.origins, "rerank": "--no-rerank"})
    _note_flags_the_mode_ignores(ctx, settings.rerank_mode, notice(quiet))
    q = parse_query(query, image, add=add or [], subtract=subtract or [], warn=warn)
    where = SearchFilter.make(
        under=under or [], since=since, until=until, modality=modality.value if modality else None
    )
    preview = preview or preview_protocol is not PreviewProtocol.auto
    if preview and (json_out or paths_only or null):
        raise UsageError("--preview draws on a terminal; it does not combine with --json, --paths-only or --null")
    protocol = preview_protocol_for(preview_protocol.value, notify=notice(quiet)) if preview else None
    if settings.server:
        from retrv.serve.client import search_via_server

        _refuse_server_side_flags(ctx)
        document = search_via_server(
            settings,
            q,
            k=k,
            min_score=min_score,
            token=token,
            where=where,
            all_copies=all_copies,
            near_duplicates=dedup,
        )
        ranking = Ranking.from_dict(document, query=q)
    else:
        from retrv.engine import Engine

        engine = Engine.from_settings(
            settings,
            encoder=encoder,
            min_score=min_score,
            force_answer=force_answer,
            trust_remote_code=trust_remote_code,
            notify=notice(quiet),
        )
        ranking = engine.search(q, k=k, where=where, all_copies=all_copies, near_duplicates=dedup)
        document = engine.document(ranking)
    report_on_stderr(ranking, quiet=quiet)
    if where is not None and not ranking.hits:  # said even with --quiet, like "no match": it is the whole answer
        notice(False)(f"no item passes the filters ({where.describe()})")
    if json_out:
        print_json(document)
        return
    if protocol is not None:
        render_previews(ranking, protocol, show_reasoning=show_reasoning, notify=notice(quiet))
        return
    render_ranking(ranking, paths_only=paths_only, null=null, show_reasoning=show_reasoning, quiet=quiet)


# What the server decides when it loads its models (`retrv serve` takes these flags), not a request.
SERVER_SIDE_FLAGS = (
    "encoder",
    "reasoner",
    "device",
    *MODE_FLAGS["score"],
    *MODE_FLAGS["reason"],
    "trust_remote_code",
    "storage_options",
    "ann_memory",
)


def _note_flags_the_mode_ignores(ctx: typer.Context, mode: str, notify: Callable[[str], None]) -> None:
    for owner, names in MODE_FLAGS.items():
        given = [n for n in names if getattr(ctx.get_parameter_source(n), "name", None) == "COMMANDLINE"]
        if owner != mode and given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            verb, pronoun = ("applies", "it does") if len(given) == 1 else ("apply", "they do")
            notify(f"{flags} {verb} to --rerank {owner}; the stage 2 here is {mode}, so {pronoun} nothing")


def _refuse_server_side_flags(ctx: typer.Context) -> None:
    from retrv.errors import UsageError

    for name in SERVER_SIDE_FLAGS:
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
            flag = "--" + name.replace("_", "-")
            if name == "encoder":
                raise UsageError(
                    "--encoder: the server searches each index with the encoder it was built with; drop it"
                )
            raise UsageError(f"{flag} is the server's to choose (retrv serve {flag} ...); drop it, or drop --server")
