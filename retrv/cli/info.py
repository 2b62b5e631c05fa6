"""`retrv info`: what an index holds and how it is stored."""

from __future__ import annotations

import typer

from retrv.cli.common import (
    IndexOption,
    JsonOption,
    QuietOption,
    StorageOptionsOption,
    handle_errors,
    print_json,
    settings_from_flags,
    silence_library,
    stdout_console,
)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _describe_ann(ann: dict | None) -> str:
    if not ann:
        return "no faiss cache yet (built at the next search)"
    state = "current" if ann["current"] else "stale: updated at the next search"
    size = human_size(ann["file_bytes"]) if ann.get("file_bytes") is not None else "?"
    plan = ann.get("plan") or {}
    chosen = ""
    if plan.get("factory"):
        chosen = f" {plan['factory']}" + (", lists memory-mapped" if plan.get("mmap") else "")
    elif plan.get("nlist"):
        chosen = f" nlist={plan['nlist']}"
    if plan.get("expected_bytes") is not None:
        budget = f" of a {human_size(plan['budget_bytes'])} budget" if plan.get("budget_bytes") else ""
        chosen += f" · expected memory {human_size(plan['expected_bytes'])}{budget}"
    return f"{ann['kind']}{chosen} · cache of table version {ann['version']} ({state}) · {size}"


@handle_errors
def info(
    ctx: typer.Context,
    index: IndexOption = None,
    storage_options: StorageOptionsOption = None,
    json_out: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Show an index's encoder, dimension, counts per modality, size on disk, version and ANN state (its kind,
    parameters and expected memory)."""
    from retrv.index.index import Index

    silence_library(quiet)
    settings = settings_from_flags(ctx, index=index, storage_options=storage_options)
    data = Index.from_settings(settings).info()
    if json_out:
        print_json({"schema": "retrv.info/1", **data})
        return
    ann = data["ann"]
    lines = [
        ("index", data["path"]),
        ("encoder", f"{data['encoder']} ({data['dim']}-d)"),
        ("items", f"{data['items']}  " + ", ".join(f"{m}: {n}" for m, n in sorted(data["by_modality"].items()))),
        ("size on disk", human_size(data["size_bytes"])),
        ("table version", str(data["table_version"])),
        ("ann", _describe_ann(ann)),
        ("reasoner tokens", ", ".join(data["side_tables"]) or "none (retrv compress)"),
    ]
    console = stdout_console()
    for key, value in lines:
        console.print(f"{key:>16}  {value}", markup=False)
