#!/usr/bin/env bash
# The model owner's public material for issue 30's runs, made once under OUT_DIR: words and
# paragraphs of the State of the Union training split (alignment_corpora.py; never a task's
# records), split into training and validation files, and the importance K = 13 emulator chosen
# on State of the Union text (65.8 % of SmolLM2-135M's parameters, not distilled).
# Usage: bash docs/results/alignment_public.sh OUT_DIR   (does nothing that is already there)
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
HERE=$(dirname "$0")
mkdir -p "$OUT/public"
python3 "$HERE/alignment_corpora.py" "$SHARED/sotu/train.jsonl" "$OUT/public"
head -n 1800 "$OUT/public/words.jsonl" > "$OUT/public/words-train.jsonl"
tail -n 64 "$OUT/public/words.jsonl" > "$OUT/public/words-val.jsonl"
head -n 1800 "$OUT/public/paragraphs.jsonl" > "$OUT/public/paragraphs-train.jsonl"
tail -n 64 "$OUT/public/paragraphs.jsonl" > "$OUT/public/paragraphs-val.jsonl"
[ -f "$OUT/k13-importance.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance \
    --calibration "$SHARED/sotu/train.jsonl" -o "$OUT/k13-importance.offsite"
