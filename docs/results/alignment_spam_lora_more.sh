#!/usr/bin/env bash
# Issue 30, spam, session 6: the top-layer LoRA that measured best (0.900, rank 8, own samples,
# 200 steps, lr 1e-3) with a higher rank, with twice the model owner's steps, and on the speech
# sentences instead of the own samples. Rows of the spam-k13 experiment (the data owner's budget
# is unchanged: 200 steps × 4 for every row).
# Usage: bash docs/results/alignment_spam_lora_more.sh OUT_DIR   (after alignment_lora.sh)
set -euo pipefail
. "$(dirname "$0")/spam_k13.sh"
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
M="$OUT/public-self-mail"
SPAM_TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
# name : corpus prefix : rank : alignment steps
for v in r16:"$M/mail":16:200 steps400:"$M/mail":8:400 \
         speeches:"$OUT/public/paragraphs":8:200; do
    IFS=: read -r name corpus rank steps <<< "$v"
    echo "== $name $(date)"
    spam_k13 \
        --align-data "$corpus-train.jsonl" --align-val "$corpus-val.jsonl" \
        --align-steps "$steps" --align-lr 1e-3 --align-target emulator --align-positions last \
        --align-params lora-top --align-lora-r "$rank" --align-template "$SPAM_TEMPLATE"
done
echo "== done $(date)"
