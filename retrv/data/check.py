"""`retrv data check`: every problem of an M-BEIR-layout dataset, reported with its file and line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from retrv.data.mbeir import (
    INSTRUCTIONS_FILE,
    SPLITS,
    MBeirDataset,
    Problem,
    image_problem,
    numbered_lines,
    parse_candidate,
    parse_instruction,
    parse_qrel,
    parse_query,
)
from retrv.errors import DataError

if TYPE_CHECKING:
    from retrv.progress import ProgressCallback


def check_dataset(root: str | Path, progress: ProgressCallback | None = None) -> list[Problem]:
    """Every problem of an M-BEIR-layout dataset, with file and line; an empty list means it is sound.

    Checked: JSON, fields and their types, modalities (and that they match the text/image present), id format,
    duplicate qids/dids per file, image paths inside the root and present on disk, qrels columns and qids,
    instruction rows, and that each query's positives of its own dataset id are in its pool (local, else global).
    Positives from another dataset id (OVEN/INFOSEEK cross-links) are not required: UniIR's eval drops them.
    """
    from retrv.progress import emit

    root = Path(os.path.normpath(Path(root).expanduser().absolute()))
    problems: list[Problem] = []
    if not root.is_dir():
        return [Problem(str(root), None, "not a directory")]

    def report(where: str, message: str) -> None:
        file, _, line = where.rpartition(":")
        problems.append(Problem(file, int(line), message) if line.isdigit() else Problem(where, None, message))

    def image_exists(path: str | None, where: str) -> None:
        problem = image_problem(path) if path is not None else None
        if problem is not None:
            report(where, f"{problem}: {Path(str(path)).relative_to(root).as_posix()}")

    def scan_pool(path: Path) -> set[str] | None:
        """The pool's dids, or None when some line is unreadable (then missing positives are not reported)."""
        dids: set[str] | None = set()
        for where, line in numbered_lines(path, root):
            try:
                c = parse_candidate(line, where, root, "")
            except DataError as e:
                report(where, str(e).removeprefix(f"{where}: "))
                dids = None
                continue
            if dids is None:
                image_exists(c.image_path, where)
                continue
            if c.did in dids:
                report(where, f"duplicate did {c.did}")
            dids.add(c.did)
            image_exists(c.image_path, where)
        return dids

    pools: dict[Path, set[str] | None] = {}
    splits = [s for s in SPLITS if (root / "query" / s).is_dir()]
    if not splits:
        problems.append(Problem("query", None, "no query/{train,val,test}/ folders"))
    for split in splits:
        try:
            ds = MBeirDataset.open(root, split)
        except DataError as e:
            problems.append(Problem(f"query/{split}", None, str(e).split(": ", 1)[-1]))
            continue
        for n, name in enumerate(ds.datasets):
            emit(progress, "check", n, len(ds.datasets), f"{split}/{name}")
            try:
                pool_path: Path | None = ds.pool_file(name)
            except DataError:
                try:
                    pool_path = ds.pool_file(pool="global")
                except DataError:
                    pool_path = None
                    problems.append(
                        Problem(
                            ds.query_file(name).relative_to(root).as_posix(),
                            None,
                            f"no candidate pool: cand_pool/local/mbeir_{name}[_{split}]_cand_pool.jsonl "
                            f"or cand_pool/global/mbeir_union_{split}_cand_pool.jsonl",
                        )
                    )
            if pool_path is not None and pool_path not in pools:
                pools[pool_path] = scan_pool(pool_path)
            qids: set[str] = set()
            queries_readable = True
            for where, line in numbered_lines(ds.query_file(name), root):
                try:
                    q = parse_query(line, where, root, name, split)
                except DataError as e:
                    report(where, str(e).removeprefix(f"{where}: "))
                    queries_readable = False
                    continue
                if q.qid in qids:
                    report(where, f"duplicate qid {q.qid}")
                qids.add(q.qid)
                image_exists(q.image_path, where)
                if not q.pos:
                    report(where, f"query {q.qid} has no positive candidate")
                if pool_path is not None and (pool_dids := pools[pool_path]) is not None:
                    for did in q.pos:
                        if did not in pool_dids and did.split(":")[0] == q.qid.split(":")[0]:
                            report(
                                where, f"positive {did} of {q.qid} is not in {pool_path.relative_to(root).as_posix()}"
                            )
            qrels_path = root / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"
            if qrels_path.is_file():
                for where, line in numbered_lines(qrels_path, root):
                    try:
                        qid = parse_qrel(line, where)[0]
                    except DataError as e:
                        report(where, str(e).removeprefix(f"{where}: "))
                        continue
                    if queries_readable and qid not in qids:
                        report(where, f"qid {qid} is not in {ds.query_file(name).relative_to(root).as_posix()}")
            elif split == "test":
                problems.append(Problem(qrels_path.relative_to(root).as_posix(), None, "missing qrels file"))
    ins = root / INSTRUCTIONS_FILE
    if not ins.is_file():
        problems.append(Problem(INSTRUCTIONS_FILE, None, "missing instructions file"))
    else:
        for where, line in list(numbered_lines(ins, root))[1:]:
            try:
                parse_instruction(line, where)
            except DataError as e:
                report(where, str(e).removeprefix(f"{where}: "))
    return problems
