#!/usr/bin/env bash
# Issue 30 item 3 on spam, within the table's budget: a FedBiOT-style exchange in two rounds of
# 100 of the data owner's steps each (200 × 4 records in all, as every row of the spam table).
#   round 1: the data owner tunes A → A'₁ through the importance K = 13 emulator E*₁ (100 steps);
#   the model owner re-distils E*₁ with A'₁ in both models (the plugged full model as teacher)
#     on public State of the Union paragraphs in spam's prompt template → E*₂ (100 steps);
#   round 2: the data owner tunes A'₁ → A'₂ through E*₂ (100 steps);
#   the model owner aligns A'₂ (rank-8 LoRA on the top adapter layers, target [A'₂, E*₂] at the
#     answer position, the same templated public paragraphs, 200 steps, lr 1e-3: the spam setup
#     that measured best in round-1-only runs).
# Each step's plug-in and emulator rows are scored on spam's first 200 test records.
# Usage: bash docs/results/alignment_spam_round.sh OUT_DIR   (resumable: rerun after a crash)
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
HERE=$(dirname "$0")
S="$SHARED/spam"
R="$OUT/spam-round"
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
tune() {  # tune OUT PACKAGE SEED [extra args]
    local out=$1 package=$2 seed=$3
    shift 3
    [ -f "$out" ] || "$B" tune "$package" --data "$S/train.jsonl" --val "$R/val64.jsonl" \
        --max-steps 100 --batch-size 4 --warmup-steps 5 --eval-every 50 --save-every 50 \
        --lr 1e-4 --seed "$seed" --summary "$out.summary.json" --resume "$@" -o "$out"
}
echo "== round 1 $(date)"
tune "$R/adapter1.safetensors" "$E1" 42
eval_to "$R/plug_in1.json" smollm2 --adapter "$R/adapter1.safetensors"
eval_to "$R/emulator_ft1.json" "$E1" --adapter "$R/adapter1.safetensors"
echo "== re-distil under A'1 $(date)"
[ -f "$R/emulator2.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance \
    --calibration "$SHARED/sotu/train.jsonl" --distill "$R/template-paragraphs.jsonl" \
    --distill-from "$E1" --distill-adapter "$R/adapter1.safetensors" --distill-steps 100 \
    --kd-weight 1 --lm-weight 0 --logit-weight 1 --kd-norm token --lr 2e-4 --schedule cosine \
    --warmup-steps 5 --clip 1 --batch-size 4 --block-size 128 --eval-every 50 --save-every 25 \
    --seed 42 --resume -o "$R/emulator2.offsite"
echo "== round 2 $(date)"
tune "$R/adapter2.safetensors" "$R/emulator2.offsite" 43 --init-adapter "$R/adapter1.safetensors"
eval_to "$R/plug_in2.json" smollm2 --adapter "$R/adapter2.safetensors"
eval_to "$R/emulator_ft2.json" "$R/emulator2.offsite" --adapter "$R/adapter2.safetensors"
echo "== align A'2 $(date)"
a="$R/aligned2.safetensors"
[ -f "$a" ] || "$B" align smollm2 "$R/emulator2.offsite" "$R/adapter2.safetensors" \
    --data "$OUT/public/paragraphs-train.jsonl" --val "$OUT/public/paragraphs-val.jsonl" \
    --align-target emulator --align-positions last --align-params lora-top --align-lora-r 8 \
    --align-template "$TEMPLATE" --max-steps 200 --batch-size 4 --lr 1e-3 \
    --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
"$B" inspect "$a" --json > "$R/aligned2.inspect.json"
eval_to "$R/plug_in_aligned2.json" smollm2 --adapter "$a"
eval_to "$R/emulator_zero_shot2.json" "$R/emulator2.offsite"
echo "== done $(date)"
