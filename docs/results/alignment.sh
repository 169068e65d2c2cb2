#!/usr/bin/env bash
# Plug-in alignment (issue 30) on SmolLM2-135M-Instruct: the experiment's rows (zero-shot,
# emulator zero-shot / fine-tuned, oracle, plug-in, proxy, full fine-tuning) at 200 steps × 4
# records, then each alignment variant (target × trained part × public corpus) as its own
# `offsite align` + `offsite eval`, so that variants share the tuned adapter.
#
# Emulator: importance K = 13 chosen on State of the Union text (65.8 % of the model's
# parameters). Public alignment text: words and paragraphs of the State of the Union training
# split (alignment_corpora.py), never the task's records; the hypernym task's prompt template is
# the one thing the data owner shares.
# Usage: bash docs/results/alignment.sh OUT_DIR    (tables: python3 docs/results/alignment_table.py OUT_DIR)
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

CAL="$SHARED/sotu/train.jsonl"
[ -f "$OUT/k13-importance.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance \
    --calibration "$CAL" -o "$OUT/k13-importance.offsite"

# Hypernym: 4-way multiple choice, each record's own choices; all 1,000 test records.
H="$SHARED/hypernym"
"$B" experiment smollm2 --train "$H/train.jsonl" --val "$H/validation.jsonl" --test "$H/test.jsonl" \
    --limit-val 100 --keep 13 --strategy importance --calibration "$CAL" \
    --emulator-package "$OUT/k13-importance.offsite" --max-steps 200 --batch-size 4 \
    --warmup-steps 10 --eval-every 50 --save-every 50 --lr 1e-4 --resume -o "$OUT/hyp-k13"
TEMPLATE=$'Question: A {text} is a kind of what?\nAnswer:'
mkdir -p "$OUT/hyp-align"
# name : target : positions : params : pull : corpus (words = templated words, paragraphs = plain text)
for v in proxy-last-all:proxy:last:all:0:words proxy-last-top:proxy:last:top:0:words \
         proxy-last-norms:proxy:last:norms:0:words emulator-last-all:emulator:last:all:0:words \
         proxy-all-all:proxy:all:all:0:words proxy-last-all-pull:proxy:last:all:100:words \
         proxy-text-all:proxy:all:all:0:paragraphs; do
    IFS=: read -r name target positions params pull corpus <<< "$v"
    a="$OUT/hyp-align/$name.safetensors"
    template=()
    [ "$corpus" = words ] && template=(--align-template "$TEMPLATE")
    block=64
    [ "$corpus" = paragraphs ] && block=128
    [ -f "$a" ] || "$B" align smollm2 "$OUT/k13-importance.offsite" "$OUT/hyp-k13/adapter.safetensors" \
        --data "$OUT/public/$corpus-train.jsonl" --val "$OUT/public/$corpus-val.jsonl" \
        --align-target "$target" --align-positions "$positions" --align-params "$params" \
        --align-pull "$pull" "${template[@]}" --max-steps 200 --batch-size 4 --block-size "$block" \
        --lr 1e-4 --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
    [ -f "$OUT/hyp-align/$name.json" ] || "$B" eval smollm2 --adapter "$a" --data "$H/test.jsonl" \
        --metric mc --json > "$OUT/hyp-align/$name.json"
    "$B" inspect "$a" --json > "$OUT/hyp-align/$name.inspect.json"
done
