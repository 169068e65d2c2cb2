#!/usr/bin/env bash
# Issue 21 item 3: does tuning through an emulator kept in GGUF blocks give the adapter that the
# f32 emulator gives, within stderr? Round 1 of alignment_spam_round.sh (SmolLM2, importance
# K = 13, 100 steps × 4 spam records, lr 1e-4, seed 42) repeated with the emulator's matrices
# in FORMAT (default q4_k: llama.cpp's q5_0 where 256-value blocks do not tile SmolLM2's 576
# columns; q8_0), then the
# emulator fine-tuned (through the same blocks) and the plug-in scored on spam's first 200 test
# records. Compare with spam-round/plug_in1.json and emulator_ft1.json.
# Usage: bash docs/results/quantized_spam.sh OUT_DIR [FORMAT]   (after alignment_spam_round.sh)
set -euo pipefail
OUT=${1:?output folder}
FORMAT=${2:-q4_k}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
R="$OUT/spam-round"
Q="$OUT/spam-${FORMAT//_/}"
mkdir -p "$Q"
a="$Q/adapter1.safetensors"
[ -f "$a" ] || "$B" tune "$OUT/k13-importance.offsite" --frozen-quantized "$FORMAT" --data "$S/train.jsonl" \
    --val "$R/val64.jsonl" --max-steps 100 --batch-size 4 --warmup-steps 5 --eval-every 50 \
    --save-every 50 --lr 1e-4 --seed 42 --summary "$a.summary.json" --resume -o "$a"
eval_to() {
    local file=$1
    shift
    [ -f "$file" ] || { "$B" eval "$@" --data "$S/test.jsonl" --limit 200 --metric mc --json \
        > "$file.tmp" && mv "$file.tmp" "$file"; }
}
eval_to "$Q/emulator_ft1.json" "$OUT/k13-importance.offsite" --frozen-quantized "$FORMAT" --adapter "$a"
eval_to "$Q/plug_in1.json" smollm2 --adapter "$a"
