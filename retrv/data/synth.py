"""The synthetic world: coloured shapes whose words collide, in M-BEIR's layout, with the true chain-of-thought.

Every image (64x64 PNG) shows two shapes side by side, each with a size (small, large), a colour (red, green,
blue, yellow, purple, orange) and a shape (circle, square, triangle); the two never share a colour or a shape.
A scene's caption names the left one first: "a small red circle left of a large blue square".

Hard negatives bind the same words differently (swap the colours, sizes or shapes of the two, or swap their
sides), so their captions are the same multiset of words: a bag-of-features encoder cannot tell them apart,
a model that checks the binding can. Three M-BEIR tasks, one dataset each:

- task 0 (text -> image), `synth_task0`: a caption ("... left of ..." or the same scene as "... right of ...").
- task 3 (image -> text), `synth_task3`: captions as candidates, always in the "left of" form.
- task 7 (image,text -> image), `synth_task7`: an image and an edit ("make the circle green", "make the square
  small", "turn the circle into a triangle", "swap the two shapes"); negatives include the edit applied to the
  wrong shape and the unedited image.

Names and ids: dataset "Synth", dataset id 90 (M-BEIR uses 0-9), so qids/dids look like "90:17". Splits train
and test; each (task, split) has its own local pool `cand_pool/local/mbeir_synth_task<T>_<split>_cand_pool.jsonl`
(MSCOCO-style per-split pools) and `cand_pool/global/mbeir_union_<split>_cand_pool.jsonl` joins them. One
candidate per distinct scene, so a scene is never both a positive and an unlabelled duplicate. `--size N` gives
N test and 4N train queries per task (N <= 144: positives of train and test are distinct scenes).
`query_src_content`/`src_content` hold the scenes as JSON (and each hard negative's kind); `synth.json` the config.

Chain-of-thought for SFT, `cot/train_cot.jsonl`, `cot_variants` JSON objects per training query (each over its
own draw and order of candidates)::

    {"qid": "90:3", "task_id": 0, "dataset": "synth_task0",
     "candidates": ["90:41", "90:7", ...],      # the dids the CoT talks about; "candidate i" is candidates[i-1]
     "cot": "Step 1 (ideal result): ...\\nStep 2 (quick elimination): ...\\nStep 3 (detailed check): ...\\n"
            "Step 4 (answer): <answer>4</answer>",
     "answer": 4,                               # 1-based index of the positive in candidates
     "inspected": [1, 4]}                       # indices inspected in step 3, in order

The candidates are the positive, its hard negatives and other pool members (8 in all, shuffled). Step 3 checks the
candidates with the positive's exact words (the only ones compressed tokens cannot separate), in order, up to
the positive; when no look-alike is among the candidates it inspects nothing. One check reads::

    Candidate 2 <inspection-index-start>2<inspection-index-end> shows a small blue triangle left of a large
    yellow circle; it should show a small blue circle left of a large yellow triangle; left small/small ok,
    blue/blue ok, triangle/circle no; right large/large ok, yellow/yellow ok, circle/triangle no: the shapes
    are swapped.

The CoT's hardest skills one at a time, `cot/train_skills.jsonl`, short; for each training truth, in turn:

- "restate", twice: a text query for the truth ("left of" and "right of" forms, inline), then Step 1's line
  for a text query, which restates it in the "left of" form::

    {"query": "a large yellow triangle right of a small blue circle", "task_id": 0, "dataset": "synth_task0",
     "skill": "restate", "cot": "Step 1 (ideal result): an image that shows a small blue circle left of a ..."}

- "check", three times: the truth against itself and two scenes with its words bound differently, each the
  candidate under a random number: after the query and its Step 1 (given, not trained), one detailed check is
  trained whole, the inspected candidate injected after the request as the reasoner injects it, so what it
  "shows" is read off the candidate and what it "should show" is copied from Step 1::

    {"qid": "90:3", "task_id": 0, "dataset": "synth_task0", "skill": "check", "answer": true,
     "candidates": ["90:17", ..., "90:4", ...],  # candidates[5] is the one inspected
     "context": "Step 1 (ideal result): an image that shows ....\\n",
     "cot": "Candidate 6 <inspection-index-start>6<inspection-index-end> shows ...; it should show ...; left
             small/small ok, ...: it matches."}

`retrv train pretrain --texts --texts-file .../train_skills.jsonl` teaches them before whole CoTs: inside whole
CoTs a tiny model did not learn them in the steps the recipe can afford (docs/training.md).
"""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path

from retrv.data.mbeir import Instruction, MBeirCandidate, MBeirQuery, write_dataset
from retrv.errors import DataError, UsageError
from retrv.progress import ProgressCallback, emit

SYNTH_DATASET, SYNTH_DATASET_ID, SYNTH_TASKS = "Synth", 90, (0, 3, 7)
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SIZES = {"small": 8, "large": 14}  # half extent in pixels
IMAGE_SIZE = 64
MAX_SIZE = 144
IMAGES = "mbeir_images/synth_images"
PROMPTS = {
    0: (
        "text",
        "image",
        ["Find the picture that matches this description.", "Retrieve the image this caption describes."],
    ),
    3: ("image", "text", ["Find the caption that describes this picture.", "Retrieve the description of this image."]),
    7: (
        "image,text",
        "image",
        [
            "Find the picture that shows this image after the described change.",
            "Retrieve the image as it looks once the edit is made.",
        ],
    ),
}


@dataclass(frozen=True)
class Shape:
    size: str
    colour: str
    shape: str

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    left: Shape
    right: Shape

    def caption(self, relation: str = "left") -> str:
        if relation == "left":
            return f"a {self.left.phrase()} left of a {self.right.phrase()}"
        return f"a {self.right.phrase()} right of a {self.left.phrase()}"

    def attributes(self) -> list[str]:
        """Size, colour and shape of the left shape, then of the right one."""
        return [self.left.size, self.left.colour, self.left.shape, self.right.size, self.right.colour, self.right.shape]

    def words(self) -> list[str]:
        return sorted(self.caption().split())

    def swaps(self) -> dict[str, Scene]:
        """Scenes with the same words bound differently, by kind."""
        a, b = self.left, self.right
        out = {
            "colours": Scene(replace(a, colour=b.colour), replace(b, colour=a.colour)),
            "sizes": Scene(replace(a, size=b.size), replace(b, size=a.size)),
            "shapes": Scene(replace(a, shape=b.shape), replace(b, shape=a.shape)),
            "sides": Scene(b, a),
        }
        return {k: s for k, s in out.items() if s != self}

    def to_json(self) -> dict:
        return {"left": asdict(self.left), "right": asdict(self.right)}


@dataclass
class SynthConfig:
    seed: int = 0
    size: int = 32  # test queries per task; train gets 4x
    cot_candidates: int = 8
    cot_variants: int = 4  # CoT records per training query, each over its own draw and order of candidates


def all_scenes() -> list[Scene]:
    objs = [Shape(s, c, h) for s, c, h in product(SIZES, COLOURS, SHAPES)]
    return [Scene(a, b) for a in objs for b in objs if a.colour != b.colour and a.shape != b.shape]


def render(scene: Scene, rng: random.Random) -> bytes:
    """PNG bytes; positions jitter with `rng` (deterministic for a seeded rng)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    for obj, (x0, x1) in ((scene.left, (15, 21)), (scene.right, (43, 49))):
        r, cx, cy = SIZES[obj.size], rng.randint(x0, x1), rng.randint(16, 48)
        box, fill = (cx - r, cy - r, cx + r, cy + r), COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def edit(scene: Scene, rng: random.Random) -> tuple[str, Scene, Scene | None]:
    """(instruction, edited scene, the same edit applied to the wrong shape or None)."""
    kind = rng.choice(("colour", "size", "shape", "sides"))
    if kind == "sides":
        return (
            rng.choice(("swap the two shapes", "swap the positions of the two shapes")),
            Scene(scene.right, scene.left),
            None,
        )
    on_left = rng.random() < 0.5
    obj, other = (scene.left, scene.right) if on_left else (scene.right, scene.left)
    if kind == "colour":
        new = rng.choice([c for c in COLOURS if c not in (obj.colour, other.colour)])
        text, change = f"make the {obj.shape} {new}", {"colour": new}
    elif kind == "size":
        new = "large" if obj.size == "small" else "small"
        text, change = f"make the {obj.shape} {new}", {"size": new}
    else:
        new = next(s for s in SHAPES if s not in (obj.shape, other.shape))
        text, change = f"turn the {obj.shape} into a {new}", {"shape": new}
    done, wrong = replace(obj, **change), replace(other, **change)
    target = Scene(done, other) if on_left else Scene(other, done)
    wrong_scene = Scene(obj, wrong) if on_left else Scene(wrong, obj)
    return text, target, wrong_scene


class _World:
    """Numbers ids, keeps one candidate per (pool, scene), renders images."""

    def __init__(self, seed: int):
        self.seed, self.next_qid, self.next_did = seed, 0, 0
        self.pools: dict[str, dict[Scene, MBeirCandidate]] = {}
        self.images: dict[str, bytes] = {}

    def image(self, name: str, scene: Scene) -> str:
        path = f"{IMAGES}/{name}.png"
        self.images[path] = render(scene, random.Random(f"retrv-synth:{self.seed}:{name}"))
        return path

    def candidate(self, pool: str, scene: Scene, task: int) -> MBeirCandidate:
        cands = self.pools.setdefault(pool, {})
        if scene not in cands:
            did, self.next_did = f"{SYNTH_DATASET_ID}:{self.next_did}", self.next_did + 1
            src = json.dumps({"scene": scene.to_json(), "caption": scene.caption()})
            if task == 3:
                cands[scene] = MBeirCandidate(did, scene.caption(), None, "text", pool, src)
            else:
                cands[scene] = MBeirCandidate(did, None, self.image(f"c{did.split(':')[1]}", scene), "image", pool, src)
        return cands[scene]

    def qid(self) -> str:
        qid, self.next_qid = f"{SYNTH_DATASET_ID}:{self.next_qid}", self.next_qid + 1
        return qid


def _describe(scene: Scene, task: int, should: bool = False) -> str:
    verb = ("should say" if should else "says") if task == 3 else ("should show" if should else "shows")
    return f'{verb} "{scene.caption()}"' if task == 3 else f"{verb} {scene.caption()}"


def _difference(scene: Scene, truth: Scene) -> str:
    """How a scene with the truth's words binds them differently."""
    differing = [a for a in ("size", "colour", "shape") if getattr(truth.left, a) != getattr(truth.right, a)]
    swapped = [a for a in differing if getattr(scene.left, a) != getattr(truth.left, a)]
    if swapped == differing:
        return "the two shapes are on the wrong sides"
    return "the " + " and ".join(f"{a}s" for a in swapped) + " are swapped"


def check_parts(task: int, index: int, scene: Scene, truth: Scene) -> tuple[str, str]:
    """One detailed check, as (the look, the comparison): candidate `index` is inspected, shows `scene`, should
    show `truth`; then the six attributes side by side, each marked ok or no, and the verdict.

    The comparison is spelt out because a whole-description verdict was not learnt: a tiny model that copies
    both descriptions perfectly still said "it matches" at chance after 1 000 steps of single checks, while
    with one mark per attribute pair (an equality of two adjacent words) it was right on every held-out check.
    """
    look = (
        f"Candidate {index} <inspection-index-start>{index}<inspection-index-end> {_describe(scene, task)};"
        f" it {_describe(truth, task, should=True)};"
    )
    pairs = [f"{a}/{b} {'ok' if a == b else 'no'}" for a, b in zip(scene.attributes(), truth.attributes())]
    verdict = "it matches" if scene == truth else _difference(scene, truth)
    return look, f" left {', '.join(pairs[:3])}; right {', '.join(pairs[3:])}: {verdict}."


def build_cot(task: int, truth: Scene, ideal: str, candidates: list[tuple[str, Scene]], positive: str) -> dict:
    """The 4-step teacher reasoning over `candidates` (did, scene), 1-indexed in the text.

    Each detailed check asks to see the candidate, says what it shows, then restates what it should show: the
    verdict compares two descriptions side by side (the same few tokens apart in the text-only pretraining
    and after an injected image) instead of one against the query far back.
    """
    answer = next(i for i, (did, _) in enumerate(candidates, 1) if did == positive)
    alike = [i for i, (_, s) in enumerate(candidates, 1) if s.words() == truth.words()]
    easy = [i for i in range(1, len(candidates) + 1) if i not in alike]
    # Step 2 names the ruled-out candidates without describing them: a description read off two compressed
    # tokens is where a small reasoner errs most, and nothing later depends on it.
    step2 = (
        f"{'Candidate' if len(easy) == 1 else 'Candidates'} {', '.join(map(str, easy))}"
        f" {'does' if len(easy) == 1 else 'do'} not have both a {truth.left.phrase()} and a"
        f" {truth.right.phrase()}: ruled out."
        if easy
        else "No candidate can be ruled out at a glance."
    )
    inspected: list[int] = []
    if len(alike) == 1:
        step3 = f"Only candidate {answer} has these objects, so no detailed check is needed."
    else:
        parts = [
            f"Candidates {', '.join(map(str, alike))} have the same sizes, colours and shapes; only how they are bound can tell them apart."
        ]
        for i in alike:
            inspected.append(i)
            parts.append("".join(check_parts(task, i, candidates[i - 1][1], truth)))
            if i == answer:
                break
        step3 = " ".join(parts)
    cot = (
        f"Step 1 (ideal result): {ideal}.\nStep 2 (quick elimination): {step2}\n"
        f"Step 3 (detailed check): {step3}\nStep 4 (answer): <answer>{answer}</answer>"
    )
    return {"candidates": [did for did, _ in candidates], "cot": cot, "answer": answer, "inspected": inspected}


def generate(
    out: str | Path,
    config: SynthConfig | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the synthetic world to `out`; the same config always writes the same bytes."""
    config = config or SynthConfig()
    if not 1 <= config.size <= MAX_SIZE:
        raise UsageError(f"synth size must be between 1 and {MAX_SIZE}, got {config.size}")
    if config.cot_variants < 1:
        raise UsageError(f"synth cot_variants must be at least 1, got {config.cot_variants}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty (use --force to replace the synthetic world in it)")
        parts = ("query", "cand_pool", "qrels", "instructions", IMAGES, "cot", "synth.json")
        if any((out / sub).exists() for sub in parts) and not _is_synthetic_world(out):
            raise DataError(
                f"{out} holds a dataset but no synthetic world written by retrv (no synth.json of ours): "
                "--force only replaces one"
            )
        for sub in parts:
            p = out / sub
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    world, queries, cots, skills = _World(config.seed), [], [], []
    scenes = all_scenes()
    n_train, n_test = 4 * config.size, config.size
    total, done = len(SYNTH_TASKS) * (n_train + n_test), 0
    for task in SYNTH_TASKS:
        rng = random.Random(f"retrv-synth:{config.seed}:task{task}")
        # own RNGs for what later versions added, so the rest stays as version 2 wrote it
        skill_rng = random.Random(f"retrv-synth:{config.seed}:task{task}:skills")
        variant_rng = random.Random(f"retrv-synth:{config.seed}:task{task}:variants")
        sampled = rng.sample(scenes, n_train + n_test)
        for split, chunk in (("train", sampled[:n_train]), ("test", sampled[n_train:])):
            pool, dataset = f"synth_task{task}_{split}", f"synth_task{task}"
            split_queries: list[tuple[MBeirQuery, Scene]] = []
            for scene in chunk:
                qid = world.qid()
                text, image, truth, wrong = None, None, scene, None
                if task == 0:
                    text = scene.caption(rng.choice(("left", "right")))
                elif task == 3:
                    image = world.image(f"q{qid.split(':')[1]}", scene)
                else:
                    text, truth, wrong = edit(scene, rng)
                    image = world.image(f"q{qid.split(':')[1]}", scene)
                hard = {"wrong shape edited": wrong, "unedited": scene} if task == 7 else {}
                hard |= {f"{k} swapped": s for k, s in truth.swaps().items()}
                negs: dict[str, str] = {}
                for kind, s in hard.items():
                    if s is not None and s != truth:
                        negs.setdefault(world.candidate(pool, s, task).did, kind)
                pos = world.candidate(pool, truth, task).did
                src = {"scene": scene.to_json(), "target": truth.to_json(), "hard_negatives": negs}
                q = MBeirQuery(
                    qid, text, image, PROMPTS[task][0], [pos], list(negs), task, dataset, split, json.dumps(src)
                )
                queries.append(q)
                split_queries.append((q, truth))
                done += 1
                emit(progress, "synth", done, total, f"{split} task {task}")
            if split == "train":
                by_did = {c.did: s for s, c in world.pools[pool].items()}
                for q, truth in split_queries:
                    cots.append(_cot_record(q, truth, by_did, config.cot_candidates, rng))
                    # Over one fixed list a query's looks are a function of its text, and a small model learns
                    # them by heart instead of reading the inspected image (docs/training.md); over fresh draws
                    # and orders only the image tells.
                    cots += [
                        _cot_record(q, truth, by_did, config.cot_candidates, variant_rng)
                        for _ in range(config.cot_variants - 1)
                    ]
                    skills += _skill_records(q, truth, config.cot_candidates, skill_rng, world.pools[pool])
    candidates = {
        name: sorted(cands.values(), key=lambda c: int(c.did.split(":")[1])) for name, cands in world.pools.items()
    }
    for split in ("train", "test"):
        candidates[f"union_{split}"] = [c for name, cs in candidates.items() if name.endswith(f"_{split}") for c in cs]
    instructions = [
        Instruction(qm, cm, SYNTH_DATASET, SYNTH_DATASET_ID, prompts) for qm, cm, prompts in PROMPTS.values()
    ]
    write_dataset(out, queries, candidates, None, instructions, world.images)
    (out / "cot").mkdir(parents=True, exist_ok=True)
    for name, records in (("train_cot.jsonl", cots), ("train_skills.jsonl", skills)):
        (out / "cot" / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    meta = {
        "generator": "retrv.data.synth",
        "version": 4,
        "dataset": SYNTH_DATASET,
        "dataset_id": SYNTH_DATASET_ID,
        "tasks": list(SYNTH_TASKS),
        "seed": config.seed,
        "size": config.size,
        "cot_candidates": config.cot_candidates,
        "cot_variants": config.cot_variants,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _is_synthetic_world(root: Path) -> bool:
    try:
        meta = json.loads((root / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("dataset") == SYNTH_DATASET


def _cot_record(q: MBeirQuery, truth: Scene, by_did: dict[str, Scene], k: int, rng: random.Random) -> dict:
    chosen = [q.pos[0], *q.neg][:k]
    others = [did for did in sorted(by_did, key=lambda d: int(d.split(":")[1])) if did not in chosen]
    chosen += rng.sample(others, min(k - len(chosen), len(others)))
    rng.shuffle(chosen)
    task = q.task_id or 0
    cot = build_cot(task, truth, _ideal(task, q, truth), [(d, by_did[d]) for d in chosen], q.pos[0])
    return {"qid": q.qid, "task_id": task, "dataset": q.dataset, **cot}


def _skill_records(
    q: MBeirQuery, truth: Scene, k: int, rng: random.Random, pool: dict[Scene, MBeirCandidate]
) -> list[dict]:
    """Step 1 of a text query for the truth, in both forms; the truth and two of its look-alikes inspected and
    checked after the query and its Step 1. About as many restatements as checks: each skill gets its share of
    every batch."""
    task = q.task_id or 0
    out = [
        {
            "query": truth.caption(form),
            "task_id": task,
            "dataset": q.dataset,
            "skill": "restate",
            "cot": f"Step 1 (ideal result): an image that shows {truth.caption()}.",
        }
        for form in ("left", "right")
    ]
    seen = [truth, *rng.sample(list(truth.swaps().values()), 2)]
    rng.shuffle(seen)
    dids = sorted((c.did for c in pool.values()), key=lambda d: int(d.split(":")[1]))
    for scene in seen:
        index = rng.randint(1, k)
        look, comparison = check_parts(task, index, scene, truth)
        # what it shows is read off the injected candidate; what it should show is copied from Step 1
        candidates = rng.sample([d for d in dids if d != pool[scene].did], k - 1)
        candidates.insert(index - 1, pool[scene].did)
        out.append(
            {
                "qid": q.qid,
                "task_id": task,
                "dataset": q.dataset,
                "skill": "check",
                "answer": scene == truth,
                "candidates": candidates,
                "context": f"Step 1 (ideal result): {_ideal(task, q, truth)}.\n",
                "cot": look + comparison,
            }
        )
    return out


def _ideal(task: int, q: MBeirQuery, truth: Scene) -> str:
    return {
        0: f"an image that shows {truth.caption()}",
        3: f'the caption "{truth.caption()}"',
        7: f"the query image after the edit ({q.text}), which shows {truth.caption()}",
    }[task]
