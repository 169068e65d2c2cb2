#!/usr/bin/env bash
# The offsite-tuning loop on SmolLM2-135M-Instruct and the State of the Union corpus
# (../shared/data/sotu: train <= 1980, validation 1981-1995, test >= 1996).
# Capped for a 2-core CPU: 80 optimizer steps of 4 x 256 tokens (~82k tokens sampled from all of
# train), validation on the first 2 validation addresses, test on the first 3 test addresses.
# Usage: bash docs/results/sotu_loop.sh OUT_DIR [KEEP]
set -euo pipefail
OUT=${1:?output folder}
KEEP=${2:-13}
DATA=${DATA:-../shared/data/sotu}
B=${OFFSITE:-./target/release/offsite}
mkdir -p "$OUT"
head -n 2 "$DATA/validation.jsonl" > "$OUT/val.jsonl"
head -n 3 "$DATA/test.jsonl" > "$OUT/test.jsonl"
"$B" emulator smollm2 --bottom 2 --top 2 --keep "$KEEP" -o "$OUT/emu.offsite"
"$B" tune "$OUT/emu.offsite" --data "$DATA/train.jsonl" --val "$OUT/val.jsonl" \
    -o "$OUT/adapter.safetensors" --max-steps 80 --batch-size 4 --block-size 256 \
    --lr 1e-4 --schedule cosine --warmup-steps 5 --eval-every 40 --save-every 20 --seed 42
for row in zero_shot emulator_zero_shot emulator_ft plug_in; do
    case $row in
        zero_shot) args=(smollm2) ;;
        emulator_zero_shot) args=("$OUT/emu.offsite") ;;
        emulator_ft) args=("$OUT/emu.offsite" --adapter "$OUT/adapter.safetensors") ;;
        plug_in) args=(smollm2 --adapter "$OUT/adapter.safetensors") ;;
    esac
    "$B" eval "${args[@]}" --data "$OUT/test.jsonl" --metric ppl --block-size 256 --json > "$OUT/$row.json"
done
echo "| row | token perplexity | word perplexity | byte perplexity | bits per byte |"
echo "| --- | ---: | ---: | ---: | ---: |"
for row in zero_shot emulator_zero_shot emulator_ft plug_in; do
    python3 -c "import json,sys; r=json.load(open('$OUT/$row.json')); print(f\"| $row | {r['token_perplexity']:.2f} | {r['word_perplexity']:.2f} | {r['byte_perplexity']:.4f} | {r['bits_per_byte']:.4f} |\")"
done
