#!/usr/bin/env bash
# The paper's five-row table on SmolLM2-135M-Instruct and the SpamAssassin task
# (../shared/data/spam: multiple choice " no"/" yes", acc/acc_norm), for two emulator sizes, and
# the PEFT methods tuned inside the adapter (issue 5), then their speed/memory (`offsite bench`).
#
# Capped for a 2-core CPU (about an hour per emulator size): 50 optimizer steps of 4 records
# (200 of the 3,972 training records, sampled with seed 42; records cut to 512 tokens from the
# left), validation loss on the first 64 validation records every 25 steps (best kept), test on
# the first 200 test records (26.5% spam). Full fine-tuning gets the same steps, data and
# learning rate as the adapter.
# Usage: bash docs/results/spam.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
DATA=${DATA:-../shared/data/spam}
B=${OFFSITE:-./target/release/offsite}
COMMON=(smollm2 --train "$DATA/train.jsonl" --val "$DATA/validation.jsonl" --test "$DATA/test.jsonl"
    --limit-val 64 --limit-test 200 --max-steps 50 --batch-size 4 --warmup-steps 5
    --eval-every 25 --save-every 25 --resume)
"$B" experiment "${COMMON[@]}" --keep 13 --lr 1e-4 -o "$OUT/spam-k13"
# Zero-shot and full fine-tuning do not depend on the emulator: K = 20 reuses those two rows.
mkdir -p "$OUT/spam-k20/rows"
cp "$OUT/spam-k13/rows/zero_shot.json" "$OUT/spam-k13/rows/full_ft.json" "$OUT/spam-k20/rows/"
"$B" experiment "${COMMON[@]}" --keep 20 --lr 1e-4 -o "$OUT/spam-k20"
# PEFT inside the adapter (K = 13): emulator fine-tuned and plug-in rows; learning rates are the
# usual ones per method, not tuned here.
for m in lora:5e-4 adapter:5e-4 bitfit:1e-3; do
    "$B" experiment "${COMMON[@]}" --keep 13 --lr "${m##*:}" --peft "${m%%:*}" \
        --skip zero-shot,emulator-zero-shot,full-ft -o "$OUT/spam-k13-${m%%:*}"
done
"$B" bench smollm2 --modes ot,ot-lora,ot-adapter,ot-bitfit --steps 3 --warmup 1 --json > "$OUT/bench_peft.json"
