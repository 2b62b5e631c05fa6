"""Rendering of results: a rich table on a terminal, tab-separated lines otherwise, paths only with -f,
NUL-separated paths with -0, thumbnails with --preview (`cli/preview.py`).

Every line output shows a source with `items.display_text`: control characters (a newline or tab in a file
name, ESC) as `\n`, `\t`, `\x1b`, so one line is one result and nothing reaches the terminal raw. `-0`
writes the sources exactly, each followed by a NUL byte, for `xargs -0`.
What a person must know about a ranking (no match, a reranker whose output was not used, a forced answer)
goes to stderr in every output mode, so that stdout stays the results alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from retrv.cli.common import escape, stderr_console, stdout_console
from retrv.items import display_text

if TYPE_CHECKING:
    from retrv.items import Hit, Ranking


def report_on_stderr(ranking: Ranking, *, quiet: bool = False) -> None:
    """No match and a reranker fallback are always said (they change what the results mean); notes unless quiet."""
    if ranking.no_match:
        stderr_console().print("[yellow]no match:[/yellow] no candidate reached --min-score")
    if ranking.fallback:
        stderr_console().print(
            f"[yellow]warning:[/yellow] the {ranking.rerank} reranker's output was unusable "
            f"({escape(ranking.fallback)}); the coarse order and scores are shown"
        )
    elif ranking.forced_answer and not quiet:
        stderr_console().print("[yellow]note:[/yellow] the reasoner stopped without an answer; it was made to name one")
    below = len(ranking.hits) - ranking.reranked
    if ranking.rerank != "none" and not ranking.fallback and ranking.reranked and below > 0 and not quiet:
        stderr_console().print(
            f"[yellow]note:[/yellow] hits {ranking.reranked + 1}-{len(ranking.hits)} are below the reranked depth "
            f"(--rerank-k): they follow in coarse order, with coarse scores"
        )


def render_ranking(
    ranking: Ranking, *, paths_only: bool = False, null: bool = False, show_reasoning: bool = False, quiet: bool = False
) -> None:
    if paths_only or null:
        if show_reasoning and ranking.reasoning:  # asked for: kept off stdout, which holds paths only
            stderr_console().print(ranking.reasoning, markup=False)
        if null:
            import os

            sys.stdout.flush()
            sys.stdout.buffer.write(b"".join(os.fsencode(hit.source) + b"\0" for hit in ranking.hits))
            sys.stdout.buffer.flush()
            return
        for hit in ranking.hits:
            sys.stdout.write(display_text(hit.source) + "\n")
        return
    tty = sys.stdout.isatty()
    if show_reasoning:
        render_reasoning(ranking, tty)
    if not tty:
        for hit in ranking.hits:
            sys.stdout.write(f"{hit.rank}\t{hit.score:.4f}\t{hit.modality}\t{display_text(hit.source)}\n")
        return
    if ranking.no_match:
        return
    from rich.table import Table

    reranked = ranking.rerank != "none" and not ranking.fallback
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    if reranked:
        table.add_column("coarse", justify="right")
    table.add_column("modality")
    table.add_column("path")
    for hit in ranking.hits:
        mark = " ★" if hit.chosen else (" 🔍" if hit.inspected else "")
        row = [str(hit.rank), f"{hit.score:.3f}"] + ([f"{hit.coarse_score:.3f}"] if reranked else [])
        table.add_row(*row, hit.modality, escape(display_text(hit.source)) + mark + _copies_note(hit))
    stdout_console().print(table)


def _copies_note(hit: Hit) -> str:
    """How many copies a hit stands for (their paths are in --json, or shown with --all-copies)."""
    n = len(hit.copies)
    return f"  (+{n} {'copy' if n == 1 else 'copies'})" if n else ""


def render_reasoning(ranking: Ranking, tty: bool) -> None:
    if ranking.reasoning is None:
        text = f"(no reasoning: rerank mode is {ranking.rerank})"
    else:
        inspected = ", ".join(f"[{i + 1}]" for i in ranking.inspected) or "none"
        reasoning = "\n".join(display_text(line) for line in ranking.reasoning.strip().splitlines())
        text = f"{reasoning}\n(inspected: {inspected})"
    if tty:
        from rich.panel import Panel

        stdout_console().print(Panel(text, title="reasoning", expand=False), markup=False)
    else:
        for line in text.splitlines():
            sys.stdout.write(f"# {line}\n")


def preview_protocol_for(choice: str, *, notify: Callable[[str], None]) -> str | None:
    """The protocol `--preview` draws with: `choice` when one is named, else the terminal's (`detect_protocol`);
    None, said through `notify`, when stdout is no terminal or the terminal speaks none that retrv knows."""
    import os

    from retrv.cli.preview import detect_protocol

    if choice != "auto":
        return choice
    if not sys.stdout.isatty():
        notify("--preview: stdout is not a terminal; showing the results without thumbnails")
        return None
    found = detect_protocol(os.environ)
    if found is None:
        notify(
            "--preview: this terminal speaks no image protocol retrv knows (kitty, iTerm2, sixel), or runs inside "
            "tmux/screen; showing the results without thumbnails (force one with --preview-protocol)"
        )
    return found


def render_previews(
    ranking: Ranking, protocol: str | None, *, show_reasoning: bool = False, notify: Callable[[str], None]
) -> None:
    """One result per block: its rank, score and source, then its thumbnail (or the start of its text)."""
    from retrv.cli.preview import render_preview
    from retrv.scan import SkipFile

    if show_reasoning:
        render_reasoning(ranking, sys.stdout.isatty())
    for hit in ranking.hits:
        sys.stdout.write(f"{hit.rank:>3}  {hit.score:.3f}  {display_text(hit.source)}{_copies_note(hit)}\n")
        if hit.image_path and protocol is not None:
            try:
                sys.stdout.write(render_preview(hit.image_path, protocol))
            except SkipFile as e:
                notify(f"no preview of {display_text(hit.image_path)}: {e.since_indexed()}")
        elif hit.text:
            sys.stdout.write(f"     {display_text(hit.text[:160])}\n")
    sys.stdout.flush()
