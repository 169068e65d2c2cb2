#!/usr/bin/env bash
# Plug-in alignment (issue 30) on State of the Union: every row of the experiment at 200 steps × 4
# blocks of 256 tokens (lr 1e-4, cosine), test = the first three addresses, including the proxy
# and the aligned plug-in. The emulator is never distilled and never sees a speech: importance
# K = 13 chosen on spam's e-mail text. The model owner aligns on public text that is not a
# speech either: sentences of spam's e-mail bodies (alignment_corpora.py), proxy target at every
# position, norm gains.
# Usage: bash docs/results/alignment_sotu.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
HERE=$(dirname "$0")
P="$OUT/public-email"
mkdir -p "$P"
python3 "$HERE/alignment_corpora.py" "$SHARED/spam/train_text.jsonl" "$P"
head -n 1800 "$P/paragraphs.jsonl" > "$P/paragraphs-train.jsonl"
tail -n 64 "$P/paragraphs.jsonl" > "$P/paragraphs-val.jsonl"
CAL="$SHARED/spam/train_text.jsonl"
[ -f "$OUT/k13-importance-email.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance \
    --calibration "$CAL" -o "$OUT/k13-importance-email.offsite"
S="$SHARED/sotu"
"$B" experiment smollm2 --train "$S/train.jsonl" --val "$S/validation.jsonl" --test "$S/test.jsonl" \
    --limit-val 2 --limit-test 3 --keep 13 --strategy importance --calibration "$CAL" \
    --emulator-package "$OUT/k13-importance-email.offsite" --max-steps 200 --batch-size 4 \
    --block-size 256 --eval-block-size 256 --lr 1e-4 --schedule cosine --warmup-steps 10 \
    --eval-every 50 --save-every 50 --seed 42 \
    --align-data "$P/paragraphs-train.jsonl" --align-val "$P/paragraphs-val.jsonl" \
    --align-steps 200 --align-lr 1e-4 --align-target proxy --align-positions all \
    --align-params norms --resume -o "$OUT/sotu-k13"
