#!/usr/bin/env bash
# Issue 6: a distilled SmolLM2 2-13-2 emulator, its perplexity against the plain layer-drop one,
# and the spam table (docs/results/spam.sh's caps) tuned through it.
# Usage: bash docs/results/distill.sh OUT_DIR   (needs docs/results/spam.sh's OUT_DIR/spam-k13 rows)
set -euo pipefail
OUT=${1:?output folder}
SOTU=${SOTU:-../shared/data/sotu}
SPAM=${SPAM:-../shared/data/spam}
B=${OFFSITE:-./target/release/offsite}
mkdir -p "$OUT"
# Distillation corpus: the training split, its last two addresses held out to pick the best step.
head -n 189 "$SOTU/train.jsonl" > "$OUT/sotu-distill-train.jsonl"
tail -n 2 "$SOTU/train.jsonl" > "$OUT/sotu-distill-val.jsonl"
"$B" emulator smollm2 --keep 13 -o "$OUT/k13-distilled.offsite" \
    --distill "$OUT/sotu-distill-train.jsonl" --distill-val "$OUT/sotu-distill-val.jsonl" \
    --distill-steps 240 --block-size 256 --batch-size 4 --lr 2e-4 --warmup-steps 10 \
    --schedule cosine --eval-every 60 --save-every 20 --resume
"$B" emulator smollm2 --keep 13 -o "$OUT/k13.offsite"
# Perplexity on the whole validation split (15 addresses, 1981-1995).
for m in k13-distilled k13; do
    "$B" eval "$OUT/$m.offsite" --data "$SOTU/validation.jsonl" --json > "$OUT/sotu-ppl-$m.json"
done
# The spam table through the distilled emulator; zero-shot and full fine-tuning do not depend on
# the emulator and are reused from spam.sh's K = 13 run.
mkdir -p "$OUT/spam-k13-distilled/rows"
cp "$OUT/spam-k13/rows/zero_shot.json" "$OUT/spam-k13/rows/full_ft.json" "$OUT/spam-k13-distilled/rows/"
"$B" experiment smollm2 --train "$SPAM/train.jsonl" --val "$SPAM/validation.jsonl" \
    --test "$SPAM/test.jsonl" --limit-val 64 --limit-test 200 --max-steps 50 --batch-size 4 \
    --warmup-steps 5 --eval-every 25 --save-every 25 --resume --keep 13 --lr 1e-4 \
    --emulator-package "$OUT/k13-distilled.offsite" -o "$OUT/spam-k13-distilled"
# The same, tuning the adapter for 100 steps (rows that do not depend on the adapter copied).
mkdir -p "$OUT/spam-k13-distilled-100/rows"
cp "$OUT/spam-k13-distilled/rows/"{zero_shot,full_ft,emulator_zero_shot}.json "$OUT/spam-k13-distilled-100/rows/"
"$B" experiment smollm2 --train "$SPAM/train.jsonl" --val "$SPAM/validation.jsonl" \
    --test "$SPAM/test.jsonl" --limit-val 64 --limit-test 200 --max-steps 100 --batch-size 4 \
    --warmup-steps 5 --eval-every 50 --save-every 25 --resume --keep 13 --lr 1e-4 \
    --emulator-package "$OUT/k13-distilled.offsite" -o "$OUT/spam-k13-distilled-100"
