#!/usr/bin/env bash
# Issue 30, session 6: a LoRA on *every* adapter layer (`--align-params lora-all`, rank 8,
# merged) — the top layers hold spam's decision (lora-top measured best there, 0.900–0.910) and
# the bottom layers hypernym's misplaced change (norm gains best there, 0.804): one part for
# both? Spam: a row of the spam-k13 experiment on the model's own `Subject:` samples (as
# alignment_lora.sh); hypernym: `align` + `eval` from the round-1 adapter on templated public
# words (as alignment_lora.sh). Both emulator target, answer position, 200 steps × 4, lr 1e-3.
# Usage: bash docs/results/alignment_lora_all.sh OUT_DIR   (after alignment_lora.sh)
set -euo pipefail
. "$(dirname "$0")/spam_k13.sh"
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
M="$OUT/public-self-mail"
SPAM_TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
spam_k13 \
    --align-data "$M/mail-train.jsonl" --align-val "$M/mail-val.jsonl" \
    --align-steps 200 --align-lr 1e-3 --align-target emulator --align-positions last \
    --align-params lora-all --align-lora-r 8 --align-template "$SPAM_TEMPLATE"

H="$SHARED/hypernym"
TEMPLATE=$'Question: A {text} is a kind of what?\nAnswer:'
name=emulator-last-lora-all-lr1e-3
a="$OUT/hyp-align/$name.safetensors"
[ -f "$a" ] || "$B" align smollm2 "$OUT/k13-importance.offsite" "$OUT/hyp-k13/adapter.safetensors" \
    --data "$OUT/public/words-train.jsonl" --val "$OUT/public/words-val.jsonl" \
    --align-target emulator --align-positions last --align-params lora-all --align-lora-r 8 \
    --align-template "$TEMPLATE" --max-steps 200 --batch-size 4 --block-size 64 --lr 1e-3 \
    --warmup-steps 10 --eval-every 50 --save-every 50 --resume -o "$a"
[ -f "$OUT/hyp-align/$name.json" ] || { "$B" eval smollm2 --adapter "$a" --data "$H/test.jsonl" \
    --metric mc --json > "$OUT/hyp-align/$name.json.tmp" && mv "$OUT/hyp-align/$name.json.tmp" "$OUT/hyp-align/$name.json"; }
"$B" inspect "$a" --json > "$OUT/hyp-align/$name.inspect.json"
