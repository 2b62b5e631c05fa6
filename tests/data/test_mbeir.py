"""The M-BEIR reader, writer and checker on a hand-written dataset in UniIR's exact layout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from retrv.data.check import check_dataset as check
from retrv.data.mbeir import Instruction, MBeirCandidate, MBeirDataset, MBeirQuery, Problem, write_dataset
from retrv.errors import DataError
from retrv.items import Item

QUERY_FILE = "query/test/mbeir_mscoco_task0_test.jsonl"
POOL_FILE = "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
QRELS_FILE = "qrels/test/mbeir_mscoco_task0_test_qrels.txt"


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture()
def mbeir(tmp_path) -> Path:
    """Two test sets as a real download names them: MSCOCO task 0 (per-split pool) and CIRR task 7."""
    root = tmp_path / "M-BEIR"
    imgs = root / "mbeir_images" / "mscoco_images"
    imgs.mkdir(parents=True)
    for name, colour in [("a.jpg", "red"), ("b.jpg", "blue"), ("c.jpg", "green"), ("q.jpg", "white")]:
        (imgs / name).write_bytes(_png(colour))
    _jsonl(
        root / QUERY_FILE,
        [
            {
                "qid": "9:1",
                "query_txt": "a red thing",
                "query_img_path": None,
                "query_modality": "text",
                "query_src_content": None,
                "pos_cand_list": ["9:100"],
                "neg_cand_list": ["9:101"],
                "task_id": 0,
            },
            {
                "qid": "9:2",
                "query_txt": "a blue thing",
                "query_img_path": None,
                "query_modality": "text",
                "query_src_content": None,
                "pos_cand_list": ["9:101"],
                "neg_cand_list": [],
            },  # task_id from the file name
        ],
    )
    _jsonl(
        root / POOL_FILE,
        [
            {
                "did": "9:100",
                "txt": None,
                "img_path": "mbeir_images/mscoco_images/a.jpg",
                "modality": "image",
                "src_content": None,
            },
            {
                "did": "9:101",
                "txt": "",
                "img_path": "mbeir_images/mscoco_images/b.jpg",
                "modality": "image",
                "src_content": None,
            },
            {
                "did": "9:102",
                "txt": None,
                "img_path": "mbeir_images/mscoco_images/c.jpg",
                "modality": "image",
                "src_content": None,
            },
        ],
    )
    # A split-less pool of another name must not be picked over the per-split one.
    _jsonl(
        root / "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl",
        [{"did": "9:999", "txt": "wrong pool", "img_path": None, "modality": "text"}],
    )
    _jsonl(
        root / "query/test/mbeir_cirr_task7_test.jsonl",
        [
            {
                "qid": "8:5",
                "query_txt": "make it green",
                "query_img_path": "mbeir_images/mscoco_images/q.jpg",
                "query_modality": "image,text",
                "pos_cand_list": ["8:7"],
                "neg_cand_list": [],
                "task_id": 7,
            }
        ],
    )
    _jsonl(
        root / "cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl",
        [
            {"did": "8:7", "txt": None, "img_path": "mbeir_images/mscoco_images/c.jpg", "modality": "image"},
            {"did": "8:8", "txt": None, "img_path": "mbeir_images/mscoco_images/a.jpg", "modality": "image"},
        ],
    )
    _jsonl(
        root / "cand_pool/global/mbeir_union_test_cand_pool.jsonl",
        [
            {"did": "9:100", "txt": None, "img_path": "mbeir_images/mscoco_images/a.jpg", "modality": "image"},
            {"did": "8:7", "txt": None, "img_path": "mbeir_images/mscoco_images/c.jpg", "modality": "image"},
        ],
    )
    (root / "qrels/test").mkdir(parents=True)
    (root / QRELS_FILE).write_text("9:1 0 9:100 1 0\n9:2 0 9:101 1 0\n")
    (root / "qrels/test/mbeir_cirr_task7_test_qrels.txt").write_text("8:5 0 8:7 1 7\n")
    (root / "instructions").mkdir()
    (root / "instructions/query_instructions.tsv").write_text(
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\n"
        "text\timage\tMSCOCO\t9\tFind me an everyday image that matches the given caption.\tIdentify the image.\n"
        "image,text\timage\tCIRR\t8\tRetrieve a day-to-day image that aligns with the modification instructions.\t\n"
    )
    return root


def test_reader_lists_datasets_tasks_and_fields(mbeir):
    ds = MBeirDataset.open(mbeir, "test")
    assert ds.datasets == ["cirr_task7", "mscoco_task0"]
    assert ds.tasks == [0, 7]
    q1, q2 = ds.queries(dataset="mscoco_task0")
    assert (q1.qid, q1.text, q1.image_path, q1.modality, q1.pos, q1.neg, q1.task_id) == (
        "9:1",
        "a red thing",
        None,
        "text",
        ["9:100"],
        ["9:101"],
        0,
    )
    assert q2.task_id == 0 and q2.dataset == "mscoco_task0" and q2.dataset_id == 9
    (q,) = ds.queries(task=7)
    assert q.image_path == str(mbeir / "mbeir_images/mscoco_images/q.jpg") and q.text == "make it green"
    assert q.to_query(instruction="x").modality == "image,text"


def test_per_split_local_pool_wins_and_global_pool(mbeir):
    ds = MBeirDataset.open(mbeir, "test")
    assert [c.did for c in ds.candidates(dataset="mscoco_task0")] == ["9:100", "9:101", "9:102"]
    assert [c.did for c in ds.candidates(dataset="cirr_task7")] == ["8:7", "8:8"]
    assert [c.did for c in ds.candidates()] == ["8:7", "8:8", "9:100", "9:101", "9:102"]
    assert [c.did for c in ds.candidates(pool="global")] == ["9:100", "8:7"]
    c = next(ds.candidates(dataset="mscoco_task0"))
    assert c.text is None and c.image_path == str(mbeir / "mbeir_images/mscoco_images/a.jpg")
    item = c.to_item()
    assert (item.id, item.modality, item.image_path) == ("9:100", "image", c.image_path)


def test_qrels_and_instructions(mbeir):
    ds = MBeirDataset.open(mbeir, "test")
    assert ds.qrels() == {"9:1": {"9:100": 1}, "9:2": {"9:101": 1}, "8:5": {"8:7": 1}}
    want = "Find me an everyday image that matches the given caption."
    assert ds.instruction("mscoco_task0", "text", "image") == want
    assert ds.instruction("MSCOCO", "text", "image") == want
    assert ds.instruction(9, "text", "image", index=1) == "Identify the image."
    assert ds.instruction("cirr_task7", "image,text", "image").startswith("Retrieve a day-to-day")
    assert ds.instruction("mscoco_task0", "image", "text") is None


def test_check_passes_on_a_sound_dataset(mbeir):
    assert check(mbeir) == []


def _edit_line(root: Path, rel: str, line: int, new: str) -> None:
    lines = (root / rel).read_text().splitlines()
    lines[line - 1] = new
    (root / rel).write_text("\n".join(lines) + "\n")


def _query2(**change) -> str:
    record = {
        "qid": "9:2",
        "query_txt": "a blue thing",
        "query_img_path": None,
        "query_modality": "text",
        "pos_cand_list": ["9:101"],
        "neg_cand_list": [],
    }
    record.update(change)
    return json.dumps({k: v for k, v in record.items() if v != "DROP"})


@pytest.mark.parametrize(
    "rel, line, new, expected",
    [
        (QUERY_FILE, 2, '{"qid": "9:2", "query_txt": ', "malformed JSON"),
        (QUERY_FILE, 2, _query2(query_modality="DROP"), "missing field 'query_modality'"),
        (QUERY_FILE, 2, _query2(pos_cand_list="DROP"), "missing field 'pos_cand_list'"),
        (QUERY_FILE, 2, _query2(query_modality="text,image"), "modality should be one of text, image, image,text"),
        (QUERY_FILE, 2, _query2(query_modality="image"), "modality 'image' but no image path"),
        (
            QUERY_FILE,
            2,
            _query2(query_modality="image,text", query_img_path="../outside.jpg"),
            "leaves the dataset root",
        ),
        (
            QUERY_FILE,
            2,
            _query2(query_modality="image,text", query_img_path="mbeir_images/../../x.jpg"),
            "leaves the dataset root",
        ),
        (QUERY_FILE, 2, _query2(query_modality="image,text", query_img_path="/etc/passwd"), "leaves the dataset root"),
        (
            QUERY_FILE,
            2,
            _query2(query_modality="image,text", query_img_path="mbeir_images/mscoco_images/nope.jpg"),
            "image not found: mbeir_images/mscoco_images/nope.jpg",
        ),
        (QUERY_FILE, 2, _query2(pos_cand_list=["9:555"]), "positive 9:555 of 9:2 is not in " + POOL_FILE),
        (QUERY_FILE, 2, _query2(qid="coco-2"), "qid should look like '<dataset id>:<n>'"),
        (
            POOL_FILE,
            3,
            json.dumps({"did": "9:101", "txt": "x", "img_path": None, "modality": "text"}),
            "duplicate did 9:101",
        ),
        (
            POOL_FILE,
            3,
            json.dumps(
                {"did": "9:102", "txt": None, "img_path": "mbeir_images/mscoco_images/gone.jpg", "modality": "image"}
            ),
            "image not found",
        ),
        (POOL_FILE, 3, json.dumps({"did": "9:102", "txt": "x", "img_path": None}), "missing field 'modality'"),
        (QRELS_FILE, 2, "9:2 0 9:101 1", "a qrels line has 5 columns"),
        (QRELS_FILE, 2, "9:7 0 9:101 1 0", "qid 9:7 is not in " + QUERY_FILE),
        ("instructions/query_instructions.tsv", 2, "text\timage\tMSCOCO", "at least 5 tab-separated columns"),
    ],
)
def test_check_reports_each_problem_with_file_and_line(mbeir, rel, line, new, expected):
    _edit_line(mbeir, rel, line, new)
    problems = check(mbeir)
    assert len(problems) == 1, problems
    (p,) = problems
    assert (p.file, p.line) == (rel, line)
    assert expected in p.message
    assert str(p).startswith(f"{rel}:{line}: ")


def test_check_reports_missing_files(mbeir, tmp_path):
    (mbeir / QRELS_FILE).unlink()
    (mbeir / "instructions/query_instructions.tsv").unlink()
    assert check(mbeir) == [
        Problem(QRELS_FILE, None, "missing qrels file"),
        Problem("instructions/query_instructions.tsv", None, "missing instructions file"),
    ]
    assert check(tmp_path / "nothing-here")[0].message == "not a directory"


def test_reader_raises_data_error_with_file_and_line(mbeir):
    _edit_line(mbeir, QUERY_FILE, 2, "{not json")
    ds = MBeirDataset.open(mbeir, "test")
    with pytest.raises(DataError, match=r"query/test/mbeir_mscoco_task0_test\.jsonl:2: malformed JSON"):
        list(ds.queries(dataset="mscoco_task0"))
    with pytest.raises(DataError, match="no dataset 'webqa_task1'"):
        list(ds.queries(dataset="webqa_task1"))
    with pytest.raises(DataError, match="no query/val/ folder"):
        MBeirDataset.open(mbeir, "val")


def test_write_then_read_round_trip(tmp_path):
    root = tmp_path / "w"
    queries = [
        MBeirQuery("90:0", None, "mbeir_images/x/q.png", "image", ["90:1"], ["90:2"], 3, "toy_task3", "test"),
        MBeirQuery("90:1", "hi", None, "text", ["90:2"], [], 3, "toy_task3", "test"),
    ]
    cands = [MBeirCandidate("90:1", "one", None, "text"), MBeirCandidate("90:2", "two", None, "text")]
    write_dataset(
        root,
        queries,
        {"toy_task3_test": cands},
        None,
        [Instruction("image", "text", "Toy", 90, ["Say what you see."])],
        {"mbeir_images/x/q.png": _png("red")},
    )
    assert check(root) == []
    ds = MBeirDataset.open(root, "test")
    got = list(ds.queries())
    assert [(q.qid, q.pos, q.neg, q.task_id) for q in got] == [
        ("90:0", ["90:1"], ["90:2"], 3),
        ("90:1", ["90:2"], [], 3),
    ]
    assert got[0].image_path == str(root / "mbeir_images/x/q.png")
    assert [c.text for c in ds.candidates(dataset="toy_task3")] == ["one", "two"]
    assert ds.qrels() == {"90:0": {"90:1": 1}, "90:1": {"90:2": 1}}
    assert ds.instruction("toy_task3", "image", "text") == "Say what you see."
    with pytest.raises(DataError, match="leaves the dataset root"):
        write_dataset(tmp_path / "w2", [], {}, None, [], {"../evil.png": b"x"})


def test_a_link_out_of_the_dataset_and_a_fifo_are_refused_by_check_and_by_indexing(mbeir, tmp_path):
    import os

    from retrv.index.index import Index
    from retrv.scan import NOT_REGULAR

    outside = tmp_path / "secret.jpg"
    outside.write_bytes((mbeir / "mbeir_images/mscoco_images/a.jpg").read_bytes())
    images = mbeir / "mbeir_images/mscoco_images"
    (images / "a.jpg").unlink()
    (images / "a.jpg").symlink_to(outside)  # inside the root by name, elsewhere on the machine in fact
    (images / "c.jpg").unlink()
    os.mkfifo(images / "c.jpg")  # reading it would block every reader forever
    problems = [str(p) for p in check(mbeir)]
    assert any("is a link that leads outside the dataset root" in p for p in problems)
    assert any("image is not a regular file" in p and "c.jpg" in p for p in problems)
    with pytest.raises(DataError, match="leads outside the dataset root"):
        list(MBeirDataset.open(mbeir, "test").candidates(pool="local", dataset="mscoco_task0"))

    index = Index.open(tmp_path / "index", create=True, encoder="lite", device="cpu")
    fifo = Item("8:7", "8:7", "image", image_path=str(images / "c.jpg"))
    report = index.add_items([fifo, Item("9:300", "9:300", "text", text="a caption")])  # the FIFO is never opened
    assert [(s.path, s.reason) for s in report.skipped] == [("8:7", NOT_REGULAR)] and report.added == 1
