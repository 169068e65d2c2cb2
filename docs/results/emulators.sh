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

# Session 2 (see emulators.md, "Where the transfer is lost"):
# (a) per-record scores of the spam rows through the distilled importance emulator (first 100
#     test records): zero-shot, emulator zero-shot, emulator fine-tuned, plug-in, and the plug-in
#     with only the top (layers 28-29) or only the bottom (0-1) adapter layers tuned.
T100=(--metric mc --data "$SHARED/spam/test.jsonl" --limit 100)
head -n 64 "$SHARED/spam/validation.jsonl" > "$OUT/val64.jsonl"
A="$dir/adapter.safetensors"
P="$OUT/k13-importance-distilled.offsite"
python3 docs/results/splice_adapter.py "$A" "$P" "$OUT/top-only.safetensors" 0,1
python3 docs/results/splice_adapter.py "$A" "$P" "$OUT/bottom-only.safetensors" 28,29
"$B" eval smollm2 "${T100[@]}" --scores "$OUT/sc-zero.jsonl" --json > "$OUT/m-zero.json"
"$B" eval "$P" "${T100[@]}" --scores "$OUT/sc-emuzs.jsonl" --json > "$OUT/m-emuzs.json"
"$B" eval "$P" --adapter "$A" "${T100[@]}" --scores "$OUT/sc-emuft.jsonl" --json > "$OUT/m-emuft.json"
for a in "$A:plug" "$OUT/top-only.safetensors:top-only" "$OUT/bottom-only.safetensors:bottom-only"; do
    "$B" eval smollm2 --adapter "${a%%:*}" "${T100[@]}" --scores "$OUT/sc-${a##*:}.jsonl" --json > "$OUT/m-${a##*:}.json"
done
# (b) the output term: the distilled importance emulator distilled 300 more steps with
#     KL(full || emulator) of the next-token distributions added, then the spam table through it.
"$B" emulator smollm2 --keep 13 --distill "$SHARED/sotu/train.jsonl" --distill-val "$OUT/sotu-val2.jsonl" \
    --distill-from "$P" --distill-steps 300 --kd-weight 1 --lm-weight 0 --logit-weight 1 --kd-norm token \
    --lr 1e-4 --schedule cosine --warmup-steps 10 --clip 1 --batch-size 4 --block-size 128 \
    --eval-every 100 --save-every 25 --seed 43 --resume -o "$OUT/k13-importance-distilled-logit.offsite"
dir="$OUT/spam-k13-importance_distilled_logit"
mkdir -p "$dir/rows"
cp "$OUT"/spam-rows/{oracle,full_ft}.json "$dir/rows/"
"$B" experiment "${SPAM[@]}" --keep 13 --strategy importance --calibration "$SHARED/sotu/train.jsonl" \
    --emulator-package "$OUT/k13-importance-distilled-logit.offsite" -o "$dir"
cp "$OUT/k13-importance-distilled-logit.offsite" "$dir/emulator.offsite"
"$B" inspect "$dir/emulator.offsite" --json > "$dir/inspect.json"
"$B" probe smollm2 "$dir/emulator.offsite" --data "$SHARED/sotu/validation.jsonl" --max-blocks 8 --json > "$dir/probe-sotu.json"
# (c) low rank: every middle layer kept, each matrix as truncated-SVD factors, two sizes.
for r in 0.55 0.75; do
    "$B" emulator smollm2 --keep 26 --low-rank $r -o "$OUT/k26-lowrank$r.offsite"
    "$B" probe smollm2 "$OUT/k26-lowrank$r.offsite" --data "$SHARED/sotu/validation.jsonl" --max-blocks 8 \
        --json > "$OUT/probe-k26-lowrank$r-sotu.json"
done
# (d) SGD with momentum instead of AdamW for the data owner's tuning (same budget), plugged in.
"$B" tune "$P" --data "$SHARED/spam/train.jsonl" --val "$SHARED/spam/validation.jsonl" --max-steps 50 \
    --batch-size 4 --warmup-steps 5 --eval-every 25 --lr 0.05 --optimizer sgd --block-size 512 --seed 42 \
    -o "$OUT/sgd-0.05.safetensors"
"$B" eval smollm2 --adapter "$OUT/sgd-0.05.safetensors" "${T100[@]}" --scores "$OUT/sc-sgd-plug.jsonl" --json > "$OUT/m-sgd-plug.json"
"$B" eval "$P" --adapter "$OUT/sgd-0.05.safetensors" "${T100[@]}" --json > "$OUT/m-sgd-emuft.json"
# AdamW with a smaller step (lr 3e-5): a smaller change of the adapter.
"$B" tune "$P" --data "$SHARED/spam/train.jsonl" --val "$OUT/val64.jsonl" --max-steps 50 --batch-size 4 \
    --warmup-steps 5 --eval-every 25 --lr 3e-5 --block-size 512 --seed 42 -o "$OUT/lr3e-5.safetensors"
"$B" eval smollm2 --adapter "$OUT/lr3e-5.safetensors" "${T100[@]}" --scores "$OUT/sc-lr3e-5-plug.jsonl" --json > "$OUT/m-lr3e-5-plug.json"
"$B" eval "$P" --adapter "$OUT/lr3e-5.safetensors" "${T100[@]}" --json > "$OUT/m-lr3e-5-emuft.json"
# (e) template-aware output distillation: the KD + KL emulator distilled 120 more steps on public
#     text wrapped in the spam prompt template (template_corpus.py), then the spam table.
python3 docs/results/template_corpus.py "$SHARED/sotu/train.jsonl" "$OUT/template-train.jsonl" "$OUT/template-val.jsonl"
"$B" emulator smollm2 --keep 13 --distill "$OUT/template-train.jsonl" --distill-val "$OUT/template-val.jsonl" \
    --distill-from "$OUT/k13-importance-distilled-logit.offsite" --distill-steps 120 --kd-weight 1 --lm-weight 0 \
    --logit-weight 1 --kd-norm token --lr 1e-4 --schedule cosine --warmup-steps 10 --clip 1 --batch-size 4 \
    --block-size 128 --eval-every 60 --save-every 20 --seed 44 --resume -o "$OUT/k13-template.offsite"
dir="$OUT/spam-k13-importance_distilled_template"
mkdir -p "$dir/rows"
cp "$OUT"/spam-rows/{oracle,full_ft,zero_shot}.json "$dir/rows/"
"$B" experiment "${SPAM[@]}" --keep 13 --strategy importance --calibration "$SHARED/sotu/train.jsonl" \
    --emulator-package "$OUT/k13-template.offsite" -o "$dir"
# (f) three times the tuning budget through the template-aware emulator, plugged in.
"$B" tune "$OUT/k13-template.offsite" --data "$SHARED/spam/train.jsonl" --val "$OUT/val64.jsonl" --max-steps 150 \
    --batch-size 4 --warmup-steps 5 --eval-every 75 --lr 1e-4 --block-size 512 --seed 42 -o "$OUT/long150.safetensors"
"$B" eval smollm2 --adapter "$OUT/long150.safetensors" --metric mc --data "$SHARED/spam/test.jsonl" --limit 200 \
    --scores "$OUT/sc-long150-plug.jsonl" --json > "$OUT/m-long150-plug.json"
"$B" eval "$OUT/k13-template.offsite" --adapter "$OUT/long150.safetensors" --metric mc \
    --data "$SHARED/spam/test.jsonl" --limit 200 --json > "$OUT/m-long150-emuft.json"
python3 docs/results/emulators_table.py "$OUT"
python3 docs/results/log_odds.py "$OUT"
