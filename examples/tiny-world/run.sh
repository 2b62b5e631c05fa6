#!/usr/bin/env bash
# The tiny-world recipe: the whole retrv pipeline, training included, on a CPU (53 to 64 minutes on 2 cores,
# measured in three sessions on two kinds of host; its goals are not met there: docs/training.md).
#
#   bash examples/tiny-world/run.sh                   # WORK defaults to examples/tiny-world/work (git-ignored)
#   WORK=/tmp/tw SIZE=24 bash examples/tiny-world/run.sh
#   DEVICE=cuda bash examples/tiny-world/run.sh       # the GPU profile: a larger model, sized for <= 10 minutes
#                                                     # on one H100 (written for the goals; not run yet: no GPU
#                                                     # was lent to the session that wrote it)
#
# Two synthetic worlds: one to train on (TRAIN_SEED), one to test on (TEST_SEED, never trained on).
# Stages: tiny CLIP encoder (contrastive); tiny VLM from scratch on captions -> the CoT's skills -> the CoT texts
# -> ICM -> SFT -> GRPO (and, beside it, the captioner taught Yes/No for score mode); `retrv bench` on task 0 of
# the test world: coarse, score, reason (ICM tokens) and reason (full tokens), after SFT and after GRPO.
# The final table goes to stdout and to $WORK/table.json. Every stage's output stays in $WORK; a stage
# whose output already exists is skipped (delete its folder to run it again).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEVICE="${DEVICE:-cpu}"          # cpu (the profile measured on 2 cores) or cuda (the GPU profile below)
if [ "$DEVICE" = cuda ]; then
  # A model large enough to learn the chain of thought, and the steps it needs; every value can still be set.
  : "${HIDDEN:=512}" "${LAYERS:=8}" "${HEADS:=8}" "${KV_HEADS:=4}" "${VISION_HIDDEN:=256}"
  : "${CAPTION_STEPS:=600}" "${SKILL_STEPS:=1500}" "${SKILL_SEEDS:=1}" "${TEXT_STEPS:=400}" "${ICM_STEPS:=300}"
  : "${SFT_STEPS:=800}" "${GRPO_STEPS:=60}" "${SFT_LR:=3e-4}" "${GRPO_LR:=1e-4}" "${ENCODER_STEPS:=800}"
fi
WORK="${WORK:-$HERE/work}"
RETRV="${RETRV:-retrv}"          # the retrv command (e.g. RETRV=".venv/bin/retrv")
PYTHON="${PYTHON:-python}"
TRAIN_SEED="${TRAIN_SEED:-0}"
TEST_SEED="${TEST_SEED:-1}"
SIZE="${SIZE:-48}"               # test queries per task; the training world has 4x as many
K="${K:-8}"                      # candidates the reranker sees (the synth CoT shows 8)
LIMIT="${LIMIT:-48}"             # test queries benchmarked
HIDDEN="${HIDDEN:-128}"          # the base VLM's LLM width (at 64 it never learnt to copy its query)
LAYERS="${LAYERS:-4}"            # at 2 the CoT's copying and comparing were not learnt
HEADS="${HEADS:-4}"
KV_HEADS="${KV_HEADS:-2}"
VISION_HIDDEN="${VISION_HIDDEN:-128}"  # the vision tower's width: captions exact on 80% of unseen images (32: 64%)
IMAGE_SIZE="${IMAGE_SIZE:-224}"  # pixels a side the base VLM sees: (IMAGE_SIZE/28)^2 tokens per image
SFT_LORA_R="${SFT_LORA_R:-0}"    # 0: SFT fine-tunes the whole LLM (a tiny model from scratch gains nothing from LoRA)
SFT_LR="${SFT_LR:-1e-3}"
ENCODER_STEPS="${ENCODER_STEPS:-400}"
CAPTION_STEPS="${CAPTION_STEPS:-350}"
PAIR_STEPS="${PAIR_STEPS:-200}"
SKILL_STEPS="${SKILL_STEPS:-1000}"
SKILL_SEED="${SKILL_SEED:-0}"    # the skills stage trains SKILL_SEEDS runs side by side, seeds SKILL_SEED, +1, ...
SKILL_SEEDS="${SKILL_SEEDS:-2}"  # and keeps the one with the lowest training loss (see the skills stage below)
TEXT_STEPS="${TEXT_STEPS:-150}"
ICM_STEPS="${ICM_STEPS:-100}"
SFT_STEPS="${SFT_STEPS:-450}"
GRPO_STEPS="${GRPO_STEPS:-20}"
GRPO_LR="${GRPO_LR:-3e-4}"
PROMPT_STYLE="${PROMPT_STYLE:-bare}"  # reason mode's prompt: bare (candidates, then the query) or chat (instructed)
# No task instructions anywhere: `retrv train encoder` encodes bare query texts, so an instruction prefix at
# search time would be text the encoder never saw (measured: coarse R@5 8% with it, 56% without).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tiny models gain nothing from intra-op threads; on a busy 2-core machine two threads are much slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

mkdir -p "$WORK/bench"
TIMES="$WORK/stage-seconds.txt"
: > "$TIMES"
stage() {  # stage NAME OUTPUT_DIR COMMAND...: run unless OUTPUT_DIR is already there; record its time
  local name="$1" out="$2"
  shift 2
  if [ -e "$out" ]; then
    echo "== $name: $out exists, skipped" >&2
    return
  fi
  echo "== $name" >&2
  local start=$SECONDS
  "$@"
  echo "$name $((SECONDS - start))" >> "$TIMES"
}

stage "world (train)" "$WORK/train-world" $RETRV data synth --out "$WORK/train-world" --seed "$TRAIN_SEED" --size "$SIZE"
stage "world (test)" "$WORK/test-world" $RETRV data synth --out "$WORK/test-world" --seed "$TEST_SEED" --size "$SIZE"

# Two lanes, one per core: the reasoner's chain (captions -> texts -> ICM -> SFT -> GRPO) on one, everything
# that can run beside it (the encoder, score mode's base, the benches) on the other.

# No pretrained model exists for this world: start the encoder from a random tiny CLIP.
(
  stage "encoder init" "$WORK/clip-init" $PYTHON -c "import sys; from retrv.train.random_models import build_random_dual_encoder; build_random_dual_encoder(sys.argv[1])" "$WORK/clip-init"
  stage "encoder" "$WORK/encoder" $RETRV train encoder --device "$DEVICE" --data "$WORK/train-world" --base "$WORK/clip-init" \
    --out "$WORK/encoder" --max-steps "$ENCODER_STEPS" --batch-size 32 --lr 5e-3 --warmup-steps 10 --hard-negatives 1 \
    --save-every 0 --quiet
) &
lane=$!

# The base VLM from scratch: captions alone until the vision tower sees the binding (at 224 px and width 128
# the caption loss falls to 0.06-0.14 in 350 steps; at 112 px or width 64 it stays near 0.2 with the shapes'
# sides confused).
stage "caption pretraining" "$WORK/captions" $RETRV train pretrain --device "$DEVICE" --data "$WORK/train-world" --out "$WORK/captions" \
  --max-steps "$CAPTION_STEPS" --batch-size 32 --save-every 0 --no-pairs --quiet \
  --hidden "$HIDDEN" --layers "$LAYERS" --heads "$HEADS" --kv-heads "$KV_HEADS" --image-size "$IMAGE_SIZE" \
  --vision-hidden "$VISION_HIDDEN"
wait "$lane"

bench() {  # bench NAME ARGS...: task 0 of the test world, the same encoder and index for every mode
  stage "bench $1" "$WORK/bench/$1.json" bench_json "$@"
}
bench_json() {  # the JSON document on stdout, kept only when the bench finished
  local name="$1"
  shift
  $RETRV bench mbeir "$WORK/test-world" --tasks 0 --limit "$LIMIT" --encoder "clip:$WORK/encoder" \
    --index-dir "$WORK/indexes" --rerank-k "$K" --device "$DEVICE" --quiet --no-instructions --json "$@" \
    > "$WORK/bench/$name.json.tmp"
  mv "$WORK/bench/$name.json.tmp" "$WORK/bench/$name.json"
}
# Score mode's base: the captioner taught the (query, candidate -> Yes/No) prompt.
(
  bench coarse --rerank none
  stage "pairs (score mode)" "$WORK/base" $RETRV train pretrain --device "$DEVICE" --data "$WORK/train-world" --base "$WORK/captions" \
    --out "$WORK/base" --max-steps "$PAIR_STEPS" --lr 3e-3 --warmup-steps 5 --batch-size 32 --save-every 0 \
    --no-instructions --quiet
  bench score --rerank score --reasoner "$WORK/base"
) &
lane=$!

# The reasoner's base. First the CoT's hardest skills alone, short: restating a text query in the "left of" form
# (Step 1), and one detailed check after the query and its Step 1, the inspected candidate injected ("Candidate 6
# <inspect 6> [image] shows ...; it should show ...; left small/large no, ...: the sizes are swapped."). Inside
# whole CoTs none was learnt in the steps this recipe can afford.
# Whether a run learns to copy is a matter of its seed: one falls to a loss of ~0.02 and, after SFT, restates
# 48/48 unseen queries; another stalls at ~0.08 and restates 6/48; only the first made a reasoner that beats
# coarse (docs/training.md). So several seeds train side by side (the other lane is idle for most of it) and the
# run with the lowest loss over its last 50 steps, a training figure, becomes $WORK/skills.
skills() {  # skills SEED
  stage "skills (seed $1)" "$WORK/skills-seed$1" $RETRV train pretrain --device "$DEVICE" --data "$WORK/train-world" \
    --base "$WORK/captions" --out "$WORK/skills-seed$1" --max-steps "$SKILL_STEPS" --lr 3e-3 --warmup-steps 5 \
    --batch-size 32 --save-every 0 --no-captions --no-pairs --texts --texts-file "$WORK/train-world/cot/train_skills.jsonl" \
    --no-instructions --quiet --prompt-style "$PROMPT_STYLE" --num-candidates "$K" --seed "$1"
}
if [ ! -e "$WORK/skills" ]; then
  [ "$SKILL_SEEDS" -ge 1 ] || { echo "run.sh: SKILL_SEEDS must be at least 1, got $SKILL_SEEDS" >&2; exit 2; }
  seeds=$(seq "$SKILL_SEED" $((SKILL_SEED + SKILL_SEEDS - 1)))
  runs=()
  for seed in $seeds; do
    skills "$seed" &
    runs+=($!)
  done
  for run in "${runs[@]}"; do wait "$run"; done
  best=$($PYTHON - "$WORK" $seeds <<'PY'
import json, sys
def loss(seed):
    rows = [json.loads(line) for line in open(f"{sys.argv[1]}/skills-seed{seed}/metrics.jsonl") if line.strip()]
    return sum(r["loss"] for r in rows[-50:]) / len(rows[-50:])
losses = {seed: loss(seed) for seed in sys.argv[2:]}
print("skills: loss over the last 50 steps by seed:", {s: round(v, 4) for s, v in losses.items()}, file=sys.stderr)
print(min(losses, key=losses.get))
PY
)
  ln -s "skills-seed$best" "$WORK/skills"
fi
# Then whole CoTs, each after its query (text, image, or both), every inspected candidate injected where it is asked for.
stage "texts" "$WORK/texts" $RETRV train pretrain --device "$DEVICE" --data "$WORK/train-world" --base "$WORK/skills" \
  --out "$WORK/texts" --max-steps "$TEXT_STEPS" --lr 3e-3 --warmup-steps 5 --batch-size 32 --save-every 0 \
  --no-captions --no-pairs --texts --no-instructions --quiet --prompt-style "$PROMPT_STYLE" --num-candidates "$K"

stage "icm" "$WORK/icm" $RETRV train icm --device "$DEVICE" --data "$WORK/train-world" --reasoner "$WORK/texts" --out "$WORK/icm" \
  --max-steps "$ICM_STEPS" --batch-size 16 --lr 1e-3 --icm-heads 4 --save-every 0 --no-instructions \
  --prompt-style "$PROMPT_STYLE" --quiet

stage "sft" "$WORK/sft" $RETRV train sft --device "$DEVICE" --data "$WORK/train-world" --cot "$WORK/train-world/cot/train_cot.jsonl" \
  --init "$WORK/icm" --out "$WORK/sft" --max-steps "$SFT_STEPS" --batch-size 4 --lr "$SFT_LR" --lora-r "$SFT_LORA_R" \
  --save-every 0 --no-instructions --quiet
wait "$lane"

(
  bench sft-icm --rerank reason --reasoner "$WORK/sft"
  bench sft-full --rerank reason --reasoner "$WORK/sft" --candidate-tokens full
) &
lane=$!
stage "grpo" "$WORK/grpo" $RETRV train grpo --device "$DEVICE" --data "$WORK/train-world" --init "$WORK/sft" --out "$WORK/grpo" \
  --max-steps "$GRPO_STEPS" --batch-size 2 --group-size 4 --num-candidates "$K" --max-new-tokens 640 --temperature 0.7 \
  --max-inspections 5 --lr "$GRPO_LR" --save-every 0 --no-instructions --quiet
wait "$lane"

bench grpo-icm --rerank reason --reasoner "$WORK/grpo" &
lane=$!
bench grpo-full --rerank reason --reasoner "$WORK/grpo" --candidate-tokens full
wait "$lane"

echo "wall $SECONDS" >> "$TIMES"
$PYTHON "$HERE/table.py" "$WORK"
