"""`retrv forget PATH...`: drop the items under paths from an index, leaving the files alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from retrv.cli.common import (
    IndexOption,
    JsonOption,
    QuietOption,
    StorageOptionsOption,
    escape,
    handle_errors,
    print_json,
    settings_from_flags,
    silence_library,
)


@handle_errors
def forget(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(metavar="PATH...", help="Files or folders (they need not exist any more).")
    ],
    index: IndexOption = None,
    storage_options: StorageOptionsOption = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Drop from the index every item at or under PATH (the files are not touched). A later build-index of a
    folder above PATH adds them back; `--exclude` keeps them out of it."""
    import os

    from retrv.index.index import Index

    silence_library(quiet)
    settings = settings_from_flags(ctx, index=index, storage_options=storage_options)
    opened = Index.from_settings(settings)
    paths = list(dict.fromkeys(Path(os.path.abspath(p.expanduser())) for p in paths))
    forgotten = opened.forget(paths)
    if json_out:
        print_json(
            {
                "schema": "retrv.forget/1",
                "index": str(opened.root),
                "paths": [str(p) for p in paths],
                "forgotten": forgotten,
            }
        )
        return
    print(f"forgot {forgotten} item(s) from {escape(str(opened.root))}; the files are untouched")
