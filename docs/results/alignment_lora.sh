#!/usr/bin/env bash
# Issue 30's third trained part: a fresh LoRA (rank 8, scale 4, no dropout) on the top adapter
# layers' linear maps, merged into them when the alignment ends (`--align-params lora-top`).
# Hypernym: the setups that measured best with norm gains (emulator target at lr 1e-4, proxy
# α = 2), as `offsite align` + `offsite eval` from the round-1 adapter of alignment.sh, plus a
# 10× step (a LoRA's B starts at zero). Spam: a row of the spam-k13 experiment, on the model's
# own e-mail-like samples (alignment_spam_self.sh).
# Usage: bash docs/results/alignment_lora.sh OUT_DIR   (after alignment.sh's hypernym part and
# alignment_spam_self.sh)
set -euo pipefail
. "$(dirname "$0")/spam_k13.sh"
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
H="$SHARED/hypernym"
eval_to() {
    local file=$1
    shift
    [ -f "$file" ] || { "$B" eval "$@" --metric mc --json > "$file.tmp" && mv "$file.tmp" "$file"; }
}
TEMPLATE=$'Question: A {text} is a kind of what?\nAnswer:'
mkdir -p "$OUT/hyp-align"
# name : target : α : learning rate
for v in emulator-last-lora:emulator:1:1e-4 emulator-last-lora-lr1e-3:emulator:1:1e-3 \
         proxy-last-lora-a2-lr1e-3:proxy:2:1e-3; do
    IFS=: read -r name target alpha lr <<< "$v"
    a="$OUT/hyp-align/$name.safetensors"
    [ -f "$a" ] || "$B" align smollm2 "$OUT/k13-importance.offsite" "$OUT/hyp-k13/adapter.safetensors" \
        --data "$OUT/public/words-train.jsonl" --val "$OUT/public/words-val.jsonl" \
        --align-target "$target" --align-positions last --align-params lora-top --align-lora-r 8 \
        --align-alpha "$alpha" --align-template "$TEMPLATE" --max-steps 200 --batch-size 4 \
        --block-size 64 --lr "$lr" --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
    eval_to "$OUT/hyp-align/$name.json" smollm2 --adapter "$a" --data "$H/test.jsonl"
    "$B" inspect "$a" --json > "$OUT/hyp-align/$name.inspect.json"
done

S="$SHARED/spam"
M="$OUT/public-self-mail"
SPAM_TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
spam_k13 \
    --align-data "$M/mail-train.jsonl" --align-val "$M/mail-val.jsonl" \
    --align-steps 200 --align-lr 1e-3 --align-target emulator --align-positions last \
    --align-params lora-top --align-lora-r 8 --align-template "$SPAM_TEMPLATE"
# The top-layer LoRA and the adapter layers' norm gains together, on the same own samples.
spam_k13 \
    --align-data "$M/mail-train.jsonl" --align-val "$M/mail-val.jsonl" \
    --align-steps 200 --align-lr 1e-3 --align-target emulator --align-positions last \
    --align-params lora-top-norms --align-lora-r 8 --align-template "$SPAM_TEMPLATE"
