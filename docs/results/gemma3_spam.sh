#!/usr/bin/env bash
# Issue 21 item 4: the offsite loop and every experiment row on Gemma 3 270M (Q4_K_M GGUF,
# dequantized; 18 layers, adapter 2 + 2), spam as yes/no multiple choice. The emulator strategy
# that measured best on SmolLM2 (importance, chosen on public State of the Union text, not
# distilled) keeping 7 of the 14 middle layers; every row 200 steps × 4 records, lr 1e-4, first
# 64 validation and 200 test records, `--precision auto`. Alignment: the spam setup that measured
# best on SmolLM2 (a rank-8 LoRA on the top adapter layers, emulator target, answer position,
# 200 steps, lr 1e-3) on public State of the Union sentences in spam's template (as good as the
# model's own samples on SmolLM2, 0.910; sampling 300 × 96 tokens from Gemma ran at ~10 tokens/s
# on 2 cores, too slow for this session — see issue 31's notes).
# Usage: bash docs/results/gemma3_spam.sh OUT_DIR   (resumable: rerun after a crash)
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
G="$OUT/gemma3"
P="$OUT/public"   # alignment.sh's public corpora (State of the Union paragraphs)
mkdir -p "$G"
[ -f "$G/k7-importance.offsite" ] || "$B" emulator gemma3-270m --keep 7 --strategy importance \
    --calibration "$SHARED/sotu/train.jsonl" -o "$G/k7-importance.offsite"
"$B" experiment gemma3-270m --train "$S/train.jsonl" --val "$S/validation.jsonl" --test "$S/test.jsonl" \
    --limit-val 64 --limit-test 200 --emulator-package "$G/k7-importance.offsite" \
    --max-steps 200 --batch-size 4 --warmup-steps 10 --eval-every 50 --save-every 50 --lr 1e-4 \
    --align-data "$P/paragraphs-train.jsonl" --align-val "$P/paragraphs-val.jsonl" \
    --align-steps 200 --align-lr 1e-3 --align-target emulator --align-positions last \
    --align-params lora-top --align-lora-r 8 --align-template "$TEMPLATE" --resume -o "$G/spam-k7"
