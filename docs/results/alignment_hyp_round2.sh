#!/usr/bin/env bash
# Hypernym, after alignment.sh's FedBiOT round: the round-2 adapter aligned by the model owner
# with the setup that measured best on round 1 (emulator target — here the re-distilled
# round-2 emulator —, answer position, norm gains, templated public words, 200 steps).
# Usage: bash docs/results/alignment_hyp_round2.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
R="$OUT/hyp-round2"
TEMPLATE=$'Question: A {text} is a kind of what?\nAnswer:'
a="$R/aligned.safetensors"
[ -f "$a" ] || "$B" align smollm2 "$R/emulator.offsite" "$R/adapter.safetensors" \
    --data "$OUT/public/words-train.jsonl" --val "$OUT/public/words-val.jsonl" \
    --align-target emulator --align-positions last --align-params norms \
    --align-template "$TEMPLATE" --max-steps 200 --batch-size 4 --block-size 64 --lr 1e-4 \
    --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
f="$R/plug_in_aligned.json"
[ -f "$f" ] || { "$B" eval smollm2 --adapter "$a" --data "$SHARED/hypernym/test.jsonl" --metric mc \
    --json > "$f.tmp" && mv "$f.tmp" "$f"; }
"$B" inspect "$a" --json > "$R/aligned.inspect.json"
