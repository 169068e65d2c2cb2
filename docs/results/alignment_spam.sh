#!/usr/bin/env bash
# Plug-in alignment (issue 30) on spam: every row of the experiment at 200 steps × 4 records
# (lr 1e-4, first 200 test records), including the proxy and the aligned plug-in. Same emulator
# as the hypernym run (importance K = 13 chosen on State of the Union text, never distilled).
# The model owner aligns on public State of the Union sentences wrapped in spam's prompt
# template (the one thing the data owner shares), emulator target, answer position, norm gains:
# the setup that measured best on hypernym (alignment.md).
# Usage: bash docs/results/alignment_spam.sh OUT_DIR   (after alignment.sh has made OUT_DIR/public
# and OUT_DIR/k13-importance.offsite)
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
"$B" experiment smollm2 --train "$S/train.jsonl" --val "$S/validation.jsonl" --test "$S/test.jsonl" \
    --limit-val 64 --limit-test 200 --keep 13 --strategy importance \
    --calibration "$SHARED/sotu/train.jsonl" --emulator-package "$OUT/k13-importance.offsite" \
    --max-steps 200 --batch-size 4 --warmup-steps 10 --eval-every 50 --save-every 50 --lr 1e-4 \
    --align-data "$OUT/public/paragraphs-train.jsonl" --align-val "$OUT/public/paragraphs-val.jsonl" \
    --align-steps 200 --align-lr 1e-4 --align-target emulator --align-positions last \
    --align-params norms --align-template "$TEMPLATE" --resume -o "$OUT/spam-k13"
