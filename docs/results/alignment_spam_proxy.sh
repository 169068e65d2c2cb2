#!/usr/bin/env bash
# Spam, after alignment_spam.sh: the proxy at α = 2 as a row of its own (eval --proxy), and the
# plug-in aligned towards it (proxy target, α = 2, answer position, norm gains, the same public
# speech sentences in spam's template): a second alignment row in the same experiment folder.
# Usage: bash docs/results/alignment_spam_proxy.sh OUT_DIR
set -euo pipefail
. "$(dirname "$0")/spam_k13.sh"
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
P="$OUT/spam-k13/proxy-a2.json"
[ -f "$P" ] || { "$B" eval smollm2 --proxy "$OUT/k13-importance.offsite" \
    --adapter "$OUT/spam-k13/adapter.safetensors" --alpha 2 --data "$S/test.jsonl" --limit 200 \
    --json > "$P.tmp" && mv "$P.tmp" "$P"; }
spam_k13 \
    --align-data "$OUT/public/paragraphs-train.jsonl" --align-val "$OUT/public/paragraphs-val.jsonl" \
    --align-steps 200 --align-lr 1e-4 --align-target proxy --align-alpha 2 --align-positions last \
    --align-params norms --align-template "$TEMPLATE"
