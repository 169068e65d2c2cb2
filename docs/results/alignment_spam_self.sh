#!/usr/bin/env bash
# Spam, after alignment_spam.sh: the plug-in aligned on the model's *own* e-mail-like text
# (data-free: `sample --prompt "Subject:"`, 300 continuations of at most 96 tokens; 264 to train,
# 36 held out) in spam's template, emulator target, answer position, norm gains, 200 steps —
# the setup of alignment_spam.sh with self-generated mail instead of speech sentences (which
# only ever show the "not spam" side). A third alignment row in the same experiment folder.
# Usage: bash docs/results/alignment_spam_self.sh OUT_DIR
set -euo pipefail
. "$(dirname "$0")/spam_k13.sh"
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=${OFFSITE:-./target/release/offsite}
S="$SHARED/spam"
TEMPLATE=$'Subject: {text}\n\nQuestion: Is this email spam?\nAnswer:'
M="$OUT/public-self-mail"
mkdir -p "$M"
[ -f "$M/mail.jsonl" ] || "$B" sample smollm2 -n 300 --max-tokens 96 --seed 1000 --prompt "Subject:" \
    -o "$M/mail.jsonl"
head -n 264 "$M/mail.jsonl" > "$M/mail-train.jsonl"
tail -n +265 "$M/mail.jsonl" > "$M/mail-val.jsonl"
spam_k13 \
    --align-data "$M/mail-train.jsonl" --align-val "$M/mail-val.jsonl" \
    --align-steps 200 --align-lr 1e-4 --align-target emulator --align-positions last \
    --align-params norms --align-template "$TEMPLATE"
