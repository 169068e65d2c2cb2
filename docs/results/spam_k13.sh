# Sourced by the spam scripts of issue 30 (needs B, S and OUT set): `spam_k13 FLAGS…` runs the
# spam-k13 experiment of alignment.md — every row 200 steps × 4 records, lr 1e-4, the first 64
# validation and 200 test records, through the importance K = 13 package — with FLAGS added
# (an alignment setup). Rows already in OUT/spam-k13 are kept (--resume).
spam_k13() {
    "$B" experiment smollm2 --train "$S/train.jsonl" --val "$S/validation.jsonl" \
        --test "$S/test.jsonl" --limit-val 64 --limit-test 200 \
        --emulator-package "$OUT/k13-importance.offsite" --max-steps 200 --batch-size 4 \
        --warmup-steps 10 --eval-every 50 --save-every 50 --lr 1e-4 "$@" --resume \
        -o "$OUT/spam-k13"
}
