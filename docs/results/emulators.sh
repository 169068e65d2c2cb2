#!/usr/bin/env bash
# Emulator strategies on SmolLM2-135M-Instruct (issue 17): for each strategy and size, the
# package's size, its fidelity to the full model's middle (`offsite probe`), and the offsite
# table on the spam task (zero-shot, emulator zero-shot, emulator fine-tuned, oracle, plug-in,
# full fine-tuning) and on the State of the Union corpus.
#
# Calibration text is never the downstream task: spam's emulators are chosen on the State of the
# Union training split, the State of the Union's on spam's e-mail bodies.
# Budgets (the same for every row of a table): spam 50 steps x 4 records, lr 1e-4 (as spam.md);
# sotu 80 steps x 4 x 256 tokens, lr 1e-4 (as sotu-loop.md).
# Usage: bash docs/results/emulators.sh OUT_DIR [STRATEGY:KEEP ...]
#        (default: uniform:13 importance:13 importance-share:13 share:13)
set -euo pipefail
OUT=${1:?output folder}
shift
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(uniform:13 importance:13 importance-share:13 share:13)
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
mkdir -p "$OUT"

SPAM=(smollm2 --train "$SHARED/spam/train.jsonl" --val "$SHARED/spam/validation.jsonl"
    --test "$SHARED/spam/test.jsonl" --limit-val 64 --limit-test 200 --max-steps 50
    --batch-size 4 --warmup-steps 5 --eval-every 25 --save-every 25 --lr 1e-4 --resume)
SOTU=(smollm2 --train "$SHARED/sotu/train.jsonl" --val "$SHARED/sotu/validation.jsonl"
    --test "$SHARED/sotu/test.jsonl" --limit-val 2 --limit-test 3 --max-steps 80 --batch-size 4
    --block-size 256 --eval-block-size 256 --lr 1e-4 --schedule cosine --warmup-steps 5
    --eval-every 40 --save-every 20 --seed 42 --resume)

for run in "${RUNS[@]}"; do
    s=${run%%:*}
    k=${run##*:}
    for task in spam sotu; do
        case $task in
            spam) cal="$SHARED/sotu/train.jsonl"; common=("${SPAM[@]}") ;;
            sotu) cal="$SHARED/spam/train_text.jsonl"; common=("${SOTU[@]}") ;;
        esac
        dir="$OUT/$task-k$k-$s"
        mkdir -p "$dir/rows"
        # Rows that do not depend on the emulator are computed once per task and copied.
        for row in zero_shot oracle full_ft; do
            first="$OUT/$task-rows/$row.json"
            [ -f "$first" ] && [ ! -f "$dir/rows/$row.json" ] && cp "$first" "$dir/rows/"
        done
        "$B" experiment "${common[@]}" --keep "$k" --strategy "$s" --calibration "$cal" -o "$dir"
        mkdir -p "$OUT/$task-rows"
        for row in zero_shot oracle full_ft; do
            [ -f "$OUT/$task-rows/$row.json" ] || cp "$dir/rows/$row.json" "$OUT/$task-rows/"
        done
        "$B" inspect "$dir/emulator.offsite" --json > "$dir/inspect.json"
        for text in "$SHARED/sotu/validation.jsonl" "$SHARED/spam/train_text.jsonl"; do
            name=$(basename "$(dirname "$text")")
            "$B" probe smollm2 "$dir/emulator.offsite" --data "$text" --max-blocks 8 --json \
                > "$dir/probe-$name.json"
        done
    done
done
# The importance emulator distilled (per-token KD only, no LM term) on the State of the Union
# training split, held out on its first two validation addresses, then the spam table through it
# (the rows that do not depend on the emulator copied from the runs above).
head -n 2 "$SHARED/sotu/validation.jsonl" > "$OUT/sotu-val2.jsonl"
"$B" emulator smollm2 --keep 13 --strategy importance --calibration "$SHARED/sotu/train.jsonl" \
    --distill "$SHARED/sotu/train.jsonl" --distill-val "$OUT/sotu-val2.jsonl" --distill-steps 300 \
    --kd-weight 1 --lm-weight 0 --kd-norm token --lr 2e-4 --schedule cosine --warmup-steps 10 \
    --clip 1 --batch-size 4 --block-size 128 --eval-every 100 --save-every 50 --seed 42 --resume \
    -o "$OUT/k13-importance-distilled.offsite"
dir="$OUT/spam-k13-importance_distilled"
mkdir -p "$dir/rows"
cp "$OUT"/spam-rows/*.json "$dir/rows/"
"$B" experiment "${SPAM[@]}" --keep 13 --strategy importance --calibration "$SHARED/sotu/train.jsonl" \
    --emulator-package "$OUT/k13-importance-distilled.offsite" -o "$dir"
cp "$OUT/k13-importance-distilled.offsite" "$dir/emulator.offsite"
"$B" inspect "$dir/emulator.offsite" --json > "$dir/inspect.json"
for text in "$SHARED/sotu/validation.jsonl" "$SHARED/spam/train_text.jsonl"; do
    name=$(basename "$(dirname "$text")")
    "$B" probe smollm2 "$dir/emulator.offsite" --data "$text" --max-blocks 8 --json > "$dir/probe-$name.json"
done
python3 docs/results/emulators_table.py "$OUT"
