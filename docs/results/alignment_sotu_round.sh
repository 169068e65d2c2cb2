#!/usr/bin/env bash
# A FedBiOT-style round (issue 30 item 3) on State of the Union, after
# alignment_sotu_distilled.sh: the model owner re-distils the distilled e-mail emulator with the
# returned adapter A' in both models (the plugged full model as the teacher) on public e-mail
# text, ships it, and the data owner tunes 100 more steps from A' through it (the same 4 × 256
# tokens per step as round 1: 300 of the data owner's steps in all, not the table's 200).
# Usage: bash docs/results/alignment_sotu_round.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/sotu"
CAL="$SHARED/spam/train_text.jsonl"
A1="$OUT/sotu-k13-distilled/adapter.safetensors"
R="$OUT/sotu-round2"
mkdir -p "$R"
eval_to() {
    local file=$1
    shift
    [ -f "$file" ] || { "$B" eval "$@" --metric ppl --limit 3 --block-size 256 --batch-size 4 \
        --json > "$file.tmp" && mv "$file.tmp" "$file"; }
}
head -n 2 "$S/validation.jsonl" > "$R/sotu-val2.jsonl"
# Round 1's plug-in again, by `eval`: must equal the experiment's plug-in row.
eval_to "$R/plug_in_round1.json" smollm2 --adapter "$A1" --data "$S/test.jsonl"
[ -f "$R/emulator.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance \
    --calibration "$CAL" --distill "$OUT/email-distill.jsonl" \
    --distill-val "$OUT/email-distill-val.jsonl" \
    --distill-from "$OUT/k13-importance-email-distilled.offsite" --distill-adapter "$A1" \
    --distill-steps 150 --kd-weight 1 --lm-weight 0 --logit-weight 1 --kd-norm token --lr 1e-4 \
    --schedule cosine --warmup-steps 5 --clip 1 --batch-size 4 --block-size 128 --eval-every 50 \
    --save-every 25 --seed 42 --resume -o "$R/emulator.offsite"
[ -f "$R/adapter.safetensors" ] || "$B" tune "$R/emulator.offsite" --data "$S/train.jsonl" \
    --val "$R/sotu-val2.jsonl" --init-adapter "$A1" --max-steps 100 --batch-size 4 \
    --block-size 256 --warmup-steps 5 --eval-every 50 --save-every 50 --lr 1e-4 --seed 43 \
    --resume -o "$R/adapter.safetensors"
eval_to "$R/plug_in.json" smollm2 --adapter "$R/adapter.safetensors" --data "$S/test.jsonl"
eval_to "$R/emulator_ft.json" "$R/emulator.offsite" --adapter "$R/adapter.safetensors" \
    --data "$S/test.jsonl"
eval_to "$R/emulator_zero_shot.json" "$R/emulator.offsite" --data "$S/test.jsonl"
