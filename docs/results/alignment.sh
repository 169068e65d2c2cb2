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
# `offsite eval ARGS --metric mc --json` into FILE, only when FILE is missing; written whole or not
# at all, so that a killed run is redone.
eval_to() {
    local file=$1
    shift
    [ -f "$file" ] || { "$B" eval "$@" --metric mc --json > "$file.tmp" && mv "$file.tmp" "$file"; }
}
bash "$HERE/alignment_public.sh" "$OUT"
CAL="$SHARED/sotu/train.jsonl"

# Hypernym: 4-way multiple choice, each record's own choices; all 1,000 test records.
H="$SHARED/hypernym"
"$B" experiment smollm2 --train "$H/train.jsonl" --val "$H/validation.jsonl" --test "$H/test.jsonl" \
    --limit-val 100 --keep 13 --strategy importance --calibration "$CAL" \
    --emulator-package "$OUT/k13-importance.offsite" --max-steps 200 --batch-size 4 \
    --warmup-steps 10 --eval-every 50 --save-every 50 --lr 1e-4 --resume -o "$OUT/hyp-k13"
TEMPLATE=$'Question: A {text} is a kind of what?\nAnswer:'
mkdir -p "$OUT/hyp-align"
# name : target : positions : params : pull : corpus (words = templated words, paragraphs = plain
# text) : α : learning rate
for v in proxy-last-all:proxy:last:all:0:words:1:1e-4 proxy-last-top:proxy:last:top:0:words:1:1e-4 \
         proxy-last-norms:proxy:last:norms:0:words:1:1e-4 \
         emulator-last-all:emulator:last:all:0:words:1:1e-4 \
         proxy-last-all-pull:proxy:last:all:100:words:1:1e-4 \
         emulator-last-norms:emulator:last:norms:0:words:1:1e-4 \
         proxy-last-norms-lr1e-3:proxy:last:norms:0:words:1:1e-3 \
         proxy-last-norms-a2:proxy:last:norms:0:words:2:1e-4 \
         emulator-last-norms-lr1e-3:emulator:last:norms:0:words:1:1e-3 \
         proxy-text-all:proxy:all:all:0:paragraphs:1:1e-4; do
    IFS=: read -r name target positions params pull corpus alpha lr <<< "$v"
    a="$OUT/hyp-align/$name.safetensors"
    template=()
    [ "$corpus" = words ] && template=(--align-template "$TEMPLATE")
    block=64
    [ "$corpus" = paragraphs ] && block=128
    [ -f "$a" ] || "$B" align smollm2 "$OUT/k13-importance.offsite" "$OUT/hyp-k13/adapter.safetensors" \
        --data "$OUT/public/$corpus-train.jsonl" --val "$OUT/public/$corpus-val.jsonl" \
        --align-target "$target" --align-positions "$positions" --align-params "$params" \
        --align-pull "$pull" --align-alpha "$alpha" "${template[@]}" --max-steps 200 --batch-size 4 \
        --block-size "$block" --lr "$lr" --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
    eval_to "$OUT/hyp-align/$name.json" smollm2 --adapter "$a" --data "$H/test.jsonl"
    "$B" inspect "$a" --json > "$OUT/hyp-align/$name.inspect.json"
done

# FedBiOT-style second round on hypernym: the model owner re-distils the emulator layers with the
# returned adapter in place (both sides) on public words in the task's template (per-token KD
# at the top adapter's input + KL of the next-token distributions), ships the new package, and
# the data owner tunes 100 more steps from its round-1 adapter.
R="$OUT/hyp-round2"
mkdir -p "$R"
python3 - "$OUT/public/words-train.jsonl" "$R/template-words.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in open(sys.argv[1], encoding="utf-8"):
        w = json.loads(line)["text"]
        out.write(json.dumps({"text": f"Question: A {w} is a kind of what?\nAnswer:"}) + "\n")
PY
[ -f "$R/emulator.offsite" ] || "$B" emulator smollm2 --keep 13 --strategy importance --calibration "$CAL" \
    --distill "$R/template-words.jsonl" --distill-from "$OUT/k13-importance.offsite" \
    --distill-adapter "$OUT/hyp-k13/adapter.safetensors" --distill-steps 100 --kd-weight 1 \
    --lm-weight 0 --logit-weight 1 --kd-norm token --lr 2e-4 --schedule cosine --warmup-steps 5 \
    --clip 1 --batch-size 4 --block-size 128 --eval-every 50 --save-every 25 --seed 42 --resume \
    -o "$R/emulator.offsite"
[ -f "$R/adapter.safetensors" ] || "$B" tune "$R/emulator.offsite" --data "$H/train.jsonl" \
    --init-adapter "$OUT/hyp-k13/adapter.safetensors" --max-steps 100 --batch-size 4 --warmup-steps 5 \
    --save-every 50 --lr 1e-4 --seed 43 --resume -o "$R/adapter.safetensors"
eval_to "$R/plug_in.json" smollm2 --adapter "$R/adapter.safetensors" --data "$H/test.jsonl"
eval_to "$R/emulator_ft.json" "$R/emulator.offsite" --adapter "$R/adapter.safetensors" --data "$H/test.jsonl"

# Spam and State of the Union: every row of the experiment, with the proxy and one alignment
# setup each (see those scripts).
bash "$HERE/alignment_spam.sh" "$OUT"
bash "$HERE/alignment_sotu.sh" "$OUT"
# Session 4: State of the Union through an emulator distilled on public e-mail text, one
# FedBiOT round there, and spam aligned towards the proxy at α = 2.
bash "$HERE/alignment_sotu_distilled.sh" "$OUT"
bash "$HERE/alignment_sotu_round.sh" "$OUT"
bash "$HERE/alignment_spam_proxy.sh" "$OUT"
bash "$HERE/alignment_hyp_round2.sh" "$OUT"
bash "$HERE/alignment_spam_self.sh" "$OUT"
# Session 5: the third trained part, a LoRA on the top adapter layers (hypernym and spam).
bash "$HERE/alignment_lora.sh" "$OUT"
# Session 7: a FedBiOT exchange on spam within the table's budget (two rounds of 100 steps),
# the round-2 adapter aligned.
bash "$HERE/alignment_spam_round.sh" "$OUT"
