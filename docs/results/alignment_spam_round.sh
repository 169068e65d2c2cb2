#!/usr/bin/env bash
# Issue 30 item 3 on spam, within the table's budget: a FedBiOT-style exchange in ROUNDS rounds
# (default 2) that share the data owner's 200 steps (200 × 4 records in all, as every row of the
# spam table; the last round takes the remainder) and the model owner's 100 re-distillation steps.
#   round 1: the data owner tunes A → A'₁ through the importance K = 13 emulator E*₁;
#   before round r > 1 the model owner re-distils E*ᵣ₋₁ with A'ᵣ₋₁ in both models (the plugged
#     full model as teacher) on public State of the Union paragraphs in spam's prompt template
#     → E*ᵣ (100 / (ROUNDS − 1) steps), and the data owner tunes A'ᵣ₋₁ → A'ᵣ through it;
#   the model owner aligns the last adapter (rank-8 LoRA on the top adapter layers, target
#     [A', E*] at the answer position, the same templated public paragraphs, 200 steps, lr 1e-3:
#     the spam setup that measured best in round-1-only runs).
# Each round's plug-in and emulator rows are scored on spam's first 200 test records.
# Usage: [ROUNDS=N] bash docs/results/alignment_spam_round.sh OUT_DIR   (resumable: rerun after a
# crash). Two rounds write OUT_DIR/spam-round, N rounds OUT_DIR/spam-roundN.
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
HERE=$(dirname "$0")
S="$SHARED/spam"
ROUNDS=${ROUNDS:-2}
[ "$ROUNDS" -ge 2 ] || { echo "ROUNDS must be at least 2" >&2; exit 2; }
STEPS=$((200 / ROUNDS))
DISTILL_STEPS=$((100 / (ROUNDS - 1)))
R="$OUT/spam-round"
[ "$ROUNDS" = 2 ] || R="$OUT/spam-round$ROUNDS"
TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
bash "$HERE/alignment_public.sh" "$OUT"
mkdir -p "$R"
E1="$OUT/k13-importance.offsite"
eval_to() {
    local file=$1
    shift
    [ -f "$file" ] || { "$B" eval "$@" --data "$S/test.jsonl" --limit 200 --metric mc --json \
        > "$file.tmp" && mv "$file.tmp" "$file"; }
}
head -n 64 "$S/validation.jsonl" > "$R/val64.jsonl"
python3 - "$OUT/public/paragraphs-train.jsonl" "$R/template-paragraphs.jsonl" "$TEMPLATE" <<'PY'
import json, sys
template = sys.argv[3]
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in open(sys.argv[1], encoding="utf-8"):
        text = json.loads(line)["text"]
        out.write(json.dumps({"text": template.replace("{text}", text)}) + "\n")
PY
tune() {  # tune OUT PACKAGE SEED STEPS [extra args]
    local out=$1 package=$2 seed=$3 steps=$4
    shift 4
    [ -f "$out" ] || "$B" tune "$package" --data "$S/train.jsonl" --val "$R/val64.jsonl" \
        --max-steps "$steps" --batch-size 4 --warmup-steps 5 --eval-every 50 --save-every 50 \
        --lr 1e-4 --seed "$seed" --summary "$out.summary.json" --resume "$@" -o "$out"
}
echo "== round 1 $(date)"
tune "$R/adapter1.safetensors" "$E1" 42 "$STEPS"
eval_to "$R/plug_in1.json" smollm2 --adapter "$R/adapter1.safetensors"
eval_to "$R/emulator_ft1.json" "$E1" --adapter "$R/adapter1.safetensors"
previous="$E1"
for ((r = 2; r <= ROUNDS; r++)); do
    p=$((r - 1))
    steps=$STEPS
    [ "$r" -lt "$ROUNDS" ] || steps=$((200 - STEPS * (ROUNDS - 1)))
    echo "== re-distil under A'$p $(date)"
    [ -f "$R/emulator$r.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance \
        --calibration "$SHARED/sotu/train.jsonl" --distill "$R/template-paragraphs.jsonl" \
        --distill-from "$previous" --distill-adapter "$R/adapter$p.safetensors" \
        --distill-steps "$DISTILL_STEPS" --kd-weight 1 --lm-weight 0 --logit-weight 1 \
        --kd-norm token --lr 2e-4 --schedule cosine --warmup-steps 5 --clip 1 --batch-size 4 \
        --block-size 128 --eval-every 50 --save-every 25 --seed 42 --resume \
        -o "$R/emulator$r.offsite"
    echo "== round $r $(date)"
    tune "$R/adapter$r.safetensors" "$R/emulator$r.offsite" $((41 + r)) "$steps" \
        --init-adapter "$R/adapter$p.safetensors"
    eval_to "$R/plug_in$r.json" smollm2 --adapter "$R/adapter$r.safetensors"
    eval_to "$R/emulator_ft$r.json" "$R/emulator$r.offsite" --adapter "$R/adapter$r.safetensors"
    previous="$R/emulator$r.offsite"
done
echo "== align A'$ROUNDS $(date)"
a="$R/aligned$ROUNDS.safetensors"
[ -f "$a" ] || "$B" align smollm2 "$previous" "$R/adapter$ROUNDS.safetensors" \
    --data "$OUT/public/paragraphs-train.jsonl" --val "$OUT/public/paragraphs-val.jsonl" \
    --align-target emulator --align-positions last --align-params lora-top --align-lora-r 8 \
    --align-template "$TEMPLATE" --max-steps 200 --batch-size 4 --lr 1e-3 \
    --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
"$B" inspect "$a" --json > "$R/aligned$ROUNDS.inspect.json"
eval_to "$R/plug_in_aligned$ROUNDS.json" smollm2 --adapter "$a"
eval_to "$R/emulator_zero_shot$ROUNDS.json" "$previous"
echo "== done $(date)"
