"""Rendering of results on stdout: a rich table on a TTY, plain tab-separated lines otherwise."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from retrv.cli.common import stdout_console

if TYPE_CHECKING:
    from retrv.items import Ranking


def render_ranking(ranking: Ranking, *, paths_only: bool = False, show_reasoning: bool = False) -> None:
    if paths_only:
        for hit in ranking.hits:
            sys.stdout.write(hit.source + "\n")
        return
    tty = sys.stdout.isatty()
    if show_reasoning:
        render_reasoning(ranking, tty)
    if ranking.no_match:
        sys.stdout.write("no match: no candidate reached --min-score\n")
        return
    if not tty:
        for hit in ranking.hits:
            sys.stdout.write(f"{hit.rank}\t{hit.score:.4f}\t{hit.modality}\t{hit.source}\n")
        return
    from rich.table import Table

    reranked = ranking.rerank != "none"
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
        table.add_row(*row, hit.modality, hit.source + mark)
    stdout_console().print(table)
    if ranking.fallback:
        stdout_console().print(f"[yellow]reranker output unusable ({ranking.fallback}); coarse order kept[/yellow]")
    elif ranking.forced_answer:
        stdout_console().print("[yellow]the reasoner stopped without an answer; it was made to name one[/yellow]")


def render_reasoning(ranking: Ranking, tty: bool) -> None:
    if ranking.reasoning is None:
        text = f"(no reasoning: rerank mode is {ranking.rerank})"
    else:
        inspected = ", ".join(f"[{i + 1}]" for i in ranking.inspected) or "none"
        text = f"{ranking.reasoning.strip()}\n(inspected: {inspected})"
    if tty:
        from rich.panel import Panel

        stdout_console().print(Panel(text, title="reasoning", expand=False), markup=False)
    else:
        for line in text.splitlines():
            sys.stdout.write(f"# {line}\n")
