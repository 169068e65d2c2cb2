#!/usr/bin/env bash
# `--precision auto` against f32 on spam (issue 31): the rows of alignment_spam.sh's experiment
# (same emulator, data, budget: 200 steps × 4, lr 1e-4, first 200 test records) with the
# default precision — bf16 products where the CPU has a bf16 kernel — to set beside the f32
# rows in alignment/spam-k13/. The tables must agree within their standard errors.
# Usage: bash docs/results/precision_auto_spam.sh OUT_DIR   (after alignment.sh made
# OUT_DIR/k13-importance.offsite)
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
"$B" experiment smollm2 --train "$S/train.jsonl" --val "$S/validation.jsonl" --test "$S/test.jsonl" \
    --limit-val 64 --limit-test 200 --emulator-package "$OUT/k13-importance.offsite" \
    --max-steps 200 --batch-size 4 --warmup-steps 10 --eval-every 50 --save-every 50 --lr 1e-4 \
    --precision auto --resume -o "$OUT/spam-k13-auto"
