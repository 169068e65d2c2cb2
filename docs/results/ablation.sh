#!/usr/bin/env bash
# Issue 6: the emulator-compression ablation on SmolLM2-135M-Instruct and the spam task:
# layer drop to K = 6, 13, 20 middle layers; magnitude pruning of all 26 middle layers (30 %);
# 4-bit uniform quantization of all 26 middle layers. Each point: emulator zero-shot, the adapter
# tuned through it, plug-in. Capped for a 2-core CPU: 30 steps × 4 records cut to 256 tokens,
# lr 1e-4, test on the first 100 test records (ham share 0.74).
# Usage: bash docs/results/ablation.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
SPAM=${SPAM:-../shared/data/spam}
B=${OFFSITE:-./target/release/offsite}
"$B" ablate smollm2 --train "$SPAM/train.jsonl" --test "$SPAM/test.jsonl" --limit-test 100 \
    --max-steps 30 --batch-size 4 --warmup-steps 3 --lr 1e-4 --block-size 256 \
    --eval-block-size 256 --save-every 10 --resume \
    --keep-grid 6,13,20 --prune-grid 0.3 --bits-grid 4 -o "$OUT/ablation"
