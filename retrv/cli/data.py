"""`retrv data`: check a dataset in UniIR's M-BEIR layout, or write the synthetic world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import handle_errors, print_json, progress_bar, stderr_console

app = typer.Typer(
    help="Datasets in UniIR's M-BEIR layout: check one, or generate the synthetic world.", no_args_is_help=True
)


@app.command("check")
@handle_errors
def check(
    root: Annotated[Path, typer.Argument(help="Dataset root (holds query/, cand_pool/, qrels/, instructions/).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (schema retrv.data.check/1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")] = False,
) -> None:
    """Validate a dataset: every problem as FILE:LINE: message; exit 1 if there is any."""
    from retrv.data.check import check_dataset

    with progress_bar(quiet) as progress:
        problems = check_dataset(root, progress=progress)
    if json_out:
        print_json(
            {
                "schema": "retrv.data.check/1",
                "root": str(root),
                "ok": not problems,
                "problems": [{"file": p.file, "line": p.line, "message": p.message} for p in problems],
            }
        )
    else:
        for p in problems:
            print(p)
    if not quiet:
        stderr_console().print(
            f"{root}: {len(problems)} problem(s)" if problems else f"{root}: ok", markup=False, soft_wrap=True
        )
    if problems:
        raise typer.Exit(1)


@app.command("synth")
@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the dataset into (empty or new).")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same bytes.")] = 0,
    size: Annotated[int, typer.Option(min=1, help="Test queries per task (train gets 4x); at most 144.")] = 32,
    cot_variants: Annotated[
        int,
        typer.Option(
            min=1, help=("Chain-of-thought records per training query, each over its own draw and order of candidates.")
        ),
    ] = 4,
    force: Annotated[bool, typer.Option("--force", help="Replace a synthetic world already in --out.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (schema retrv.data.synth/1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")] = False,
) -> None:
    """Write the synthetic world (shapes whose words collide) in M-BEIR layout, with train chain-of-thought."""
    from retrv.data.mbeir import MBeirDataset
    from retrv.data.synth import SynthConfig, generate

    with progress_bar(quiet) as progress:
        path = generate(
            out, SynthConfig(seed=seed, size=size, cot_variants=cot_variants), overwrite=force, progress=progress
        )
    counts = {
        split: {name: sum(1 for _ in ds.queries(dataset=name)) for name in ds.datasets}
        for split in ("train", "test")
        for ds in [MBeirDataset.open(path, split)]
    }
    if json_out:
        print_json(
            {
                "schema": "retrv.data.synth/1",
                "path": str(path),
                "seed": seed,
                "size": size,
                "queries": counts,
                "cot": str(path / "cot" / "train_cot.jsonl"),
            }
        )
        return
    if not quiet:
        console = stderr_console()
        for split, by_name in counts.items():
            console.print(
                f"{split:>6}  " + ", ".join(f"{n}: {c}" for n, c in by_name.items()), markup=False, soft_wrap=True
            )
    print(path)
