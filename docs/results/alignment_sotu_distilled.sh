#!/usr/bin/env bash
# Plug-in alignment (issue 30) on State of the Union through a *distilled* emulator: the
# importance K = 13 emulator of alignment_sotu.sh (chosen on spam's e-mail text) distilled on
# e-mail text too (per-token KD, no LM term; never a speech), so that tuning through it learns
# the speech domain rather than repairing the emulator. Same budget as alignment_sotu.sh (200
# steps × 4 × 256 tokens); the rows that do not depend on the emulator (zero-shot, oracle, full
# fine-tuning) are copied from OUT/sotu-k13. Alignment: proxy target at every position, norm
# gains, on public e-mail sentences, as there.
# Usage: bash docs/results/alignment_sotu_distilled.sh OUT_DIR   (after alignment_sotu.sh)
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
P="$OUT/public-email"
CAL="$SHARED/spam/train_text.jsonl"
head -n 3908 "$CAL" > "$OUT/email-distill.jsonl"
tail -n 64 "$CAL" > "$OUT/email-distill-val.jsonl"
"$B" emulator smollm2 --keep 13 --strategy importance --calibration "$CAL" \
    --distill "$OUT/email-distill.jsonl" --distill-val "$OUT/email-distill-val.jsonl" \
    --distill-steps 300 --kd-weight 1 --lm-weight 0 --kd-norm token --lr 2e-4 --schedule cosine \
    --warmup-steps 10 --clip 1 --batch-size 4 --block-size 128 --eval-every 100 --save-every 50 \
    --seed 42 --resume -o "$OUT/k13-importance-email-distilled.offsite"
dir="$OUT/sotu-k13-distilled"
mkdir -p "$dir/rows"
for row in zero_shot oracle full_ft; do
    [ -f "$dir/rows/$row.json" ] || cp "$OUT/sotu-k13/rows/$row.json" "$dir/rows/"
done
S="$SHARED/sotu"
"$B" experiment smollm2 --train "$S/train.jsonl" --val "$S/validation.jsonl" --test "$S/test.jsonl" \
    --limit-val 2 --limit-test 3 --keep 13 --strategy importance --calibration "$CAL" \
    --emulator-package "$OUT/k13-importance-email-distilled.offsite" --max-steps 200 --batch-size 4 \
    --block-size 256 --eval-block-size 256 --lr 1e-4 --schedule cosine --warmup-steps 10 \
    --eval-every 50 --save-every 50 --seed 42 \
    --align-data "$P/paragraphs-train.jsonl" --align-val "$P/paragraphs-val.jsonl" \
    --align-steps 200 --align-lr 1e-4 --align-target proxy --align-positions all \
    --align-params norms --resume -o "$dir"
