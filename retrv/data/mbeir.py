"""M-BEIR in UniIR's own layout: read it, write it, check it.

A real M-BEIR download (huggingface.co/datasets/TIGER-Lab/M-BEIR) opens unchanged::

    ROOT/query/{train,val,test}/mbeir_<dataset>_<split>.jsonl      e.g. mbeir_visualnews_task0_test.jsonl
    ROOT/cand_pool/local/mbeir_<dataset>[_<split>]_cand_pool.jsonl e.g. mbeir_cirr_task7_cand_pool.jsonl,
                                                                     mbeir_mscoco_task0_test_cand_pool.jsonl
    ROOT/cand_pool/global/mbeir_union_<split>_cand_pool.jsonl
    ROOT/qrels/<split>/mbeir_<dataset>_<split>_qrels.txt            lines "qid 0 did relevance task_id"
    ROOT/instructions/query_instructions.tsv                        header, then: query modality, candidate
                                                                     modality, dataset name, dataset id, prompts...
    ROOT/mbeir_images/...                                           image paths in the jsonl are relative to ROOT

`<dataset>` is UniIR's dataset name as its configs spell it: "visualnews_task0", "mscoco_task3", "synth_task7".
A local pool named with the split (MSCOCO's quirk) wins over the split-less one.
Query lines: qid, query_txt, query_img_path, query_modality, pos_cand_list (plain did strings), neg_cand_list,
task_id (optional: else taken from "_taskN" in the file name); candidates: did, txt, img_path, modality.
Ids are "<dataset id>:<n>"; modalities are "text", "image", "image,text".

Image paths are resolved lexically inside ROOT: absolute paths elsewhere and `../` escapes are refused.
Symlinks placed inside ROOT by whoever unpacked the data are followed (images on another disk work).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from retrv.errors import DataError, UsageError

if TYPE_CHECKING:
    from retrv.items import Item, Query

T = TypeVar("T")

MBEIR_DATASET_IDS: dict[str, int] = {
    "VisualNews": 0,
    "Fashion200K": 1,
    "WebQA": 2,
    "EDIS": 3,
    "NIGHTS": 4,
    "OVEN": 5,
    "INFOSEEK": 6,
    "FashionIQ": 7,
    "CIRR": 8,
    "MSCOCO": 9,
}
# task id -> (query modality, candidate modality); UniIR leaves 5 ("image -> image,text") unused.
MBEIR_TASKS: dict[int, tuple[str, str]] = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
# The 16 (dataset, task) test sets of the M-BEIR local benchmark, in UniIR's reporting order.
MBEIR_TEST_SETS: tuple[str, ...] = (
    "visualnews_task0",
    "mscoco_task0",
    "fashion200k_task0",
    "webqa_task1",
    "edis_task2",
    "webqa_task2",
    "visualnews_task3",
    "mscoco_task3",
    "fashion200k_task3",
    "nights_task4",
    "oven_task6",
    "infoseek_task6",
    "fashioniq_task7",
    "cirr_task7",
    "oven_task8",
    "infoseek_task8",
)
MODALITIES = ("text", "image", "image,text")
SPLITS = ("train", "val", "test")
INSTRUCTIONS_FILE = "instructions/query_instructions.tsv"
INSTRUCTIONS_HEADER = (
    "query_modality",
    "cand_modality",
    "dataset",
    "dataset_id",
    "prompt_1",
    "prompt_2",
    "prompt_3",
    "prompt_4",
)

_ID = re.compile(r"^\d+:\d+$")
_TASK_IN_NAME = re.compile(r"_task(\d)$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset; `file` is relative to the dataset root, `line` 1-based (None: whole file)."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass
class MBeirQuery:
    """One query line. `image_path` is absolute (resolved inside the root) when read; the writer also takes it
    relative to the root. `dataset` is the file's dataset name ("cirr_task7"), `dataset_id` the qid prefix."""

    qid: str
    text: str | None
    image_path: str | None
    modality: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    task_id: int | None = None
    dataset: str = ""
    split: str = "test"
    src_content: str | None = None

    @property
    def dataset_id(self) -> int:
        return int(self.qid.split(":")[0])

    def to_query(self, instruction: str | None = None) -> Query:
        from retrv.items import Query

        return Query(text=self.text or None, image=self.image_path, instruction=instruction)


@dataclass
class MBeirCandidate:
    did: str
    text: str | None
    image_path: str | None
    modality: str
    dataset: str = ""
    src_content: str | None = None

    @property
    def dataset_id(self) -> int:
        return int(self.did.split(":")[0])

    def to_item(self) -> Item:
        from retrv.items import Item

        return Item(
            id=self.did,
            source=self.did,
            modality=self.modality,  # type: ignore[arg-type]  # checked against MODALITIES when read
            text=self.text or None,
            image_path=self.image_path,
        )


@dataclass
class Instruction:
    query_modality: str
    cand_modality: str
    dataset: str
    dataset_id: int
    prompts: list[str]


def resolve_image(root: Path, path: str) -> Path:
    """`path` (relative to root, or absolute) as an absolute path that stays inside root, else DataError.

    Inside means lexically, and also after following symlinks when the file exists: a link inside the dataset
    that points elsewhere on the machine is refused like `../../etc/passwd`."""
    root = Path(os.path.normpath(Path(root).absolute()))
    p = Path(path)
    full = Path(os.path.normpath(p if p.is_absolute() else root / p))
    if not full.is_relative_to(root):
        raise DataError(f"image path {path!r} leaves the dataset root")
    if os.path.lexists(full) and not Path(os.path.realpath(full)).is_relative_to(os.path.realpath(root)):
        raise DataError(f"image path {path!r} is a link that leads outside the dataset root")
    return full


def image_problem(path: str | Path) -> str | None:
    """Why a dataset's image file cannot be read, or None: missing, or not a regular file (a FIFO would block
    every reader, a device never ends)."""
    try:
        st = os.stat(path)
    except OSError:
        return "image not found"
    if not stat.S_ISREG(st.st_mode):
        return "image is not a regular file (a FIFO, device or folder)"
    return None


def _str_or_none(record: dict, key: str, where: str) -> str | None:
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} should be a string or null, got {type(value).__name__}")
    return value or None


def _check_id(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise DataError(f"{where}: {key} should look like '<dataset id>:<n>' (e.g. '9:1234'), got {value!r}")
    return value


def _check_modality(modality: object, text: str | None, image: str | None, where: str) -> str:
    if modality not in MODALITIES:
        raise DataError(f"{where}: modality should be one of {', '.join(MODALITIES)}, got {modality!r}")
    parts = modality.split(",")
    if ("text" in parts and not text) or ("image" in parts and not image):
        missing = "text" if "text" in parts and not text else "image path"
        raise DataError(f"{where}: modality {modality!r} but no {missing}")
    return modality


def _did_list(record: dict, key: str, where: str, required: bool) -> list[str]:
    if key not in record:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return []
    value = record[key] or []
    if not isinstance(value, list):
        raise DataError(f"{where}: {key} should be a list of dids")
    # The M-BEIR README shows {"did": ...} objects; the files hold plain strings. Accept both.
    return [_check_id(d.get("did") if isinstance(d, dict) else d, f"{key} entry", where) for d in value]


def _load_json(line: str, where: str) -> dict:
    try:
        record = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    return record


def parse_query(line: str, where: str, root: Path, dataset: str, split: str) -> MBeirQuery:
    record = _load_json(line, where)
    if "qid" not in record:
        raise DataError(f"{where}: missing field 'qid'")
    qid = _check_id(record["qid"], "qid", where)
    text = _str_or_none(record, "query_txt", where)
    image = _str_or_none(record, "query_img_path", where)
    if "query_modality" not in record:
        raise DataError(f"{where}: missing field 'query_modality'")
    modality = _check_modality(record["query_modality"], text, image, where)
    task_id = record.get("task_id")
    if task_id is None and (m := _TASK_IN_NAME.search(dataset)):
        task_id = int(m.group(1))
    if task_id is not None and (not isinstance(task_id, int) or task_id not in MBEIR_TASKS):
        raise DataError(f"{where}: task_id should be one of {sorted(MBEIR_TASKS)}, got {task_id!r}")
    if image is not None:
        try:
            image = str(resolve_image(root, image))
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    return MBeirQuery(
        qid=qid,
        text=text,
        image_path=image,
        modality=modality,
        pos=_did_list(record, "pos_cand_list", where, True),
        neg=_did_list(record, "neg_cand_list", where, False),
        task_id=task_id,
        dataset=dataset,
        split=split,
        src_content=record.get("query_src_content"),
    )


def parse_candidate(line: str, where: str, root: Path, dataset: str) -> MBeirCandidate:
    record = _load_json(line, where)
    if "did" not in record:
        raise DataError(f"{where}: missing field 'did'")
    did = _check_id(record["did"], "did", where)
    text = _str_or_none(record, "txt", where)
    image = _str_or_none(record, "img_path", where)
    if "modality" not in record:
        raise DataError(f"{where}: missing field 'modality'")
    modality = _check_modality(record["modality"], text, image, where)
    if image is not None:
        try:
            image = str(resolve_image(root, image))
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    return MBeirCandidate(
        did=did, text=text, image_path=image, modality=modality, dataset=dataset, src_content=record.get("src_content")
    )


def parse_qrel(line: str, where: str) -> tuple[str, str, int, int]:
    parts = line.split()
    if len(parts) != 5:
        raise DataError(f"{where}: a qrels line has 5 columns 'qid 0 did relevance task_id', got {len(parts)}")
    qid, _, did, relevance, task_id = parts
    _check_id(qid, "qid", where)
    _check_id(did, "did", where)
    if not relevance.lstrip("-").isdigit() or not task_id.isdigit():
        raise DataError(f"{where}: relevance and task_id should be integers")
    return qid, did, int(relevance), int(task_id)


def numbered_lines(path: Path, root: Path | None = None) -> Iterator[tuple[str, str]]:
    """(where, line) for every non-blank line; `where` is "file:line", the file relative to `root` when inside it."""
    rel = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield f"{rel}:{n}", line


def parsed_lines(
    path: Path, root: Path | None, parse: Callable[[str, str], T], on_error: Callable[[str, str], None]
) -> Iterator[tuple[str, T]]:
    """(where, record) for every line that `parse(line, where)` accepts; a line it rejects with DataError goes to
    `on_error(where, reason)` and is skipped (training reads data this way: report bad lines, keep going)."""
    for where, line in numbered_lines(path, root):
        try:
            yield where, parse(line, where)
        except DataError as e:
            on_error(where, str(e).removeprefix(f"{where}: "))


class MBeirDataset:
    """One split of an M-BEIR-layout dataset. Reading is lazy: each call streams its files again."""

    def __init__(self, root: Path, split: str, query_files: dict[str, Path]):
        self.root, self.split, self._query_files = root, split, query_files

    @classmethod
    def open(cls, root: str | Path, split: str = "test") -> MBeirDataset:
        root = Path(os.path.normpath(Path(root).expanduser().absolute()))
        qdir = root / "query" / split
        if not qdir.is_dir():
            raise DataError(f"{root}: no query/{split}/ folder (not an M-BEIR layout, or no {split} split)")
        suffix = f"_{split}.jsonl"
        files = {p.name[len("mbeir_") : -len(suffix)]: p for p in sorted(qdir.glob(f"mbeir_*{suffix}"))}
        if not files:
            raise DataError(f"{qdir}: no mbeir_<dataset>_{split}.jsonl files")
        return cls(root, split, files)

    @property
    def datasets(self) -> list[str]:
        return sorted(self._query_files)

    @property
    def tasks(self) -> list[int]:
        tasks: set[int] = set()
        for name in self.datasets:
            if m := _TASK_IN_NAME.search(name):
                tasks.add(int(m.group(1)))
            else:
                tasks.update(q.task_id for q in self.queries(dataset=name) if q.task_id is not None)
        return sorted(tasks)

    def query_file(self, dataset: str) -> Path:
        if dataset not in self._query_files:
            raise DataError(
                f"no dataset {dataset!r} in {self.root}/query/{self.split} (have: {', '.join(self.datasets)})"
            )
        return self._query_files[dataset]

    def queries(self, dataset: str | None = None, task: int | None = None) -> Iterator[MBeirQuery]:
        for name in [dataset] if dataset else self.datasets:
            for where, line in numbered_lines(self.query_file(name), self.root):
                q = parse_query(line, where, self.root, name, self.split)
                if task is None or q.task_id == task:
                    yield q

    def pool_file(self, dataset: str | None = None, pool: str = "local") -> Path:
        """The candidate pool file a dataset is searched in: its local pool, or the global union pool."""
        if pool == "global":
            path = self.root / "cand_pool" / "global" / f"mbeir_union_{self.split}_cand_pool.jsonl"
        elif pool == "local" and dataset is not None:
            local = self.root / "cand_pool" / "local"
            path = local / f"mbeir_{dataset}_{self.split}_cand_pool.jsonl"
            path = path if path.is_file() else local / f"mbeir_{dataset}_cand_pool.jsonl"
        else:
            raise UsageError("pool is 'local' (with a dataset) or 'global'")
        if not path.is_file():
            raise DataError(f"no {pool} candidate pool {path.relative_to(self.root)}")
        return path

    def candidates(self, pool: str = "local", dataset: str | None = None) -> Iterator[MBeirCandidate]:
        """Candidates of one local pool, of every local pool of this split (deduplicated by did), or of the
        global pool (UniIR searches the whole union pool for every dataset, so `dataset` must be None)."""
        if pool == "global":
            if dataset is not None:
                raise UsageError("the global pool is shared by all datasets; leave dataset out")
            path = self.pool_file(pool="global")
            for where, line in numbered_lines(path, self.root):
                yield parse_candidate(line, where, self.root, "union")
            return
        seen: set[str] = set()
        for name in [dataset] if dataset else self.datasets:
            for where, line in numbered_lines(self.pool_file(name), self.root):
                c = parse_candidate(line, where, self.root, name)
                if c.did not in seen:
                    seen.add(c.did)
                    yield c

    def qrels(self, dataset: str | None = None) -> dict[str, dict[str, int]]:
        """qid -> {did: relevance}, from qrels/<split>/mbeir_<dataset>_<split>_qrels.txt."""
        out: dict[str, dict[str, int]] = {}
        for name in [dataset] if dataset else self.datasets:
            path = self.root / "qrels" / self.split / f"mbeir_{name}_{self.split}_qrels.txt"
            if not path.is_file():
                raise DataError(f"no qrels file {path.relative_to(self.root)}")
            for where, line in numbered_lines(path, self.root):
                qid, did, relevance, _ = parse_qrel(line, where)
                out.setdefault(qid, {})[did] = relevance
        return out

    def instructions(self) -> list[Instruction]:
        return read_instructions(self.root)

    def instruction(self, dataset: str | int, query_modality: str, cand_modality: str, index: int = 0) -> str | None:
        """Prompt number `index` for (dataset, query modality, candidate modality), as UniIR keys it; None if
        there is none. `dataset` is a dataset id, a name from the TSV ("VisualNews") or a file name ("cirr_task7")."""
        rows = self.instructions()
        dataset_id = dataset if isinstance(dataset, int) else _dataset_id_of(str(dataset), rows, self)
        for row in rows:
            if (row.dataset_id, row.query_modality, row.cand_modality) == (dataset_id, query_modality, cand_modality):
                return row.prompts[index % len(row.prompts)] if row.prompts else None
        return None


def _dataset_id_of(name: str, rows: list[Instruction], ds: MBeirDataset) -> int | None:
    key = _TASK_IN_NAME.sub("", name).lower()
    names = {n.lower(): i for n, i in MBEIR_DATASET_IDS.items()} | {r.dataset.lower(): r.dataset_id for r in rows}
    if key in names:
        return names[key]
    if name in ds.datasets:  # fall back to the qid prefix of the dataset's first query
        return next((q.dataset_id for q in ds.queries(dataset=name)), None)
    return None


def parse_instruction(line: str, where: str) -> Instruction:
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < 5:
        raise DataError(
            f"{where}: an instruction row has at least 5 tab-separated columns "
            f"(query modality, candidate modality, dataset, dataset id, prompts), got {len(parts)}"
        )
    qm, cm, name, dataset_id = (p.strip() for p in parts[:4])
    for m in (qm, cm):
        if m not in MODALITIES:
            raise DataError(f"{where}: modality should be one of {', '.join(MODALITIES)}, got {m!r}")
    if not dataset_id.isdigit():
        raise DataError(f"{where}: dataset id should be an integer, got {dataset_id!r}")
    return Instruction(qm, cm, name, int(dataset_id), [p.strip() for p in parts[4:] if p.strip()])


def read_instructions(root: Path) -> list[Instruction]:
    path = Path(root) / INSTRUCTIONS_FILE
    if not path.is_file():
        raise DataError(f"no {INSTRUCTIONS_FILE} in {root}")
    lines = list(numbered_lines(path, Path(root)))
    return [parse_instruction(line, where) for where, line in lines[1:]]  # first line is the header


# ---------------------------------------------------------------------------------------------------- writing


def _relative_image(root: Path, path: str | None) -> str | None:
    if path is None:
        return None
    return resolve_image(root, path).relative_to(Path(os.path.normpath(root.absolute()))).as_posix()


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_dataset(
    root: str | Path,
    queries: Iterable[MBeirQuery],
    candidates: Mapping[str, Iterable[MBeirCandidate]],
    qrels: Mapping[tuple[str, str], Iterable[tuple[str, str, int, int]]] | None,
    instructions: Iterable[Instruction],
    images: Mapping[str, bytes],
) -> None:
    """Write a dataset in UniIR's layout.

    queries: go to query/<q.split>/mbeir_<q.dataset>_<q.split>.jsonl, in the order given.
    candidates: pool name -> candidates; "union_<split>" goes to cand_pool/global/, any other name N to
        cand_pool/local/mbeir_N_cand_pool.jsonl (e.g. "synth_task0_test", MSCOCO-style per-split pools).
    qrels: (split, dataset) -> (qid, did, relevance, task_id) lines; None derives them from the queries' positives
        (relevance 1), as M-BEIR's files are.
    images: path relative to root -> encoded bytes.
    """
    root = Path(root)
    by_file: dict[tuple[str, str], list[MBeirQuery]] = {}
    for q in queries:
        by_file.setdefault((q.split, q.dataset), []).append(q)
    for (split, dataset), qs in by_file.items():
        _write_jsonl(
            root / "query" / split / f"mbeir_{dataset}_{split}.jsonl",
            (
                {
                    "qid": q.qid,
                    "query_txt": q.text,
                    "query_img_path": _relative_image(root, q.image_path),
                    "query_modality": q.modality,
                    "query_src_content": q.src_content,
                    "pos_cand_list": list(q.pos),
                    "neg_cand_list": list(q.neg),
                    "task_id": q.task_id,
                }
                for q in qs
            ),
        )
    for name, cands in candidates.items():
        folder = "global" if name.startswith("union_") else "local"
        _write_jsonl(
            root / "cand_pool" / folder / f"mbeir_{name}_cand_pool.jsonl",
            (
                {
                    "did": c.did,
                    "txt": c.text,
                    "img_path": _relative_image(root, c.image_path),
                    "modality": c.modality,
                    "src_content": c.src_content,
                }
                for c in cands
            ),
        )
    if qrels is None:
        qrels = {key: [(q.qid, did, 1, q.task_id or 0) for q in qs for did in q.pos] for key, qs in by_file.items()}
    for (split, dataset), lines in qrels.items():
        path = root / "qrels" / split / f"mbeir_{dataset}_{split}_qrels.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{q} 0 {d} {r} {t}\n" for q, d, r, t in lines), encoding="utf-8")
    path = root / INSTRUCTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["\t".join(INSTRUCTIONS_HEADER)]
    for ins in instructions:
        prompts = [p.replace("\t", " ").replace("\n", " ") for p in ins.prompts]
        rows.append("\t".join([ins.query_modality, ins.cand_modality, ins.dataset, str(ins.dataset_id), *prompts]))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for rel, data in images.items():
        target = resolve_image(root, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
