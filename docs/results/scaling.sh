#!/usr/bin/env bash
# Issue 22's figures (docs/scaling.md): data-parallel tuning over MPI with 1, 2 and 4 ranks, and
# a federated run over Flower on loopback, on SmolLM2 through the importance K = 13 emulator.
#   MPI: 8 steps of global batch 4 × 256 tokens of spam training records, full adapter; one
#     rayon thread per rank when there are several (2 cores here).
#   Flower: two data owners (spam training records 0-199 and 200-399), LoRA r8 on the adapter
#     layers, 2 rounds of 10 steps of batch 4 × 256 tokens each.
# Needs: an offsite built with `--features mpi` (OFFSITE), MPICH's mpiexec, and a Python with
# federated/requirements.txt (PYTHON). Usage: bash docs/results/scaling.sh OUT_DIR
set -euo pipefail
OUT=${1:?output folder}
SHARED=${SHARED:-../shared/data}
B=$(realpath "${OFFSITE:-./target/release/offsite}")
PYTHON=${PYTHON:-python3}
HERE=$(dirname "$0")
bash "$HERE/alignment_public.sh" "$OUT"
EMU="$OUT/k13-importance.offsite"
S="$OUT/scaling"
mkdir -p "$S"
head -n 200 "$SHARED/spam/train.jsonl" > "$S/owner-a.jsonl"
sed -n 201,400p "$SHARED/spam/train.jsonl" > "$S/owner-b.jsonl"
TUNE=(--max-steps 8 --batch-size 4 --block-size 256 --lr 1e-4 --seed 42)
for n in 1 2 4; do
    out="$S/mpi-$n.safetensors"
    [ -f "$out.summary.json" ] && continue
    if [ "$n" = 1 ]; then
        "$B" tune "$EMU" --data "$S/owner-a.jsonl" "${TUNE[@]}" --summary "$out.summary.json" -o "$out"
    else
        RAYON_NUM_THREADS=1 mpiexec -n "$n" "$B" tune "$EMU" --data "$S/owner-a.jsonl" "${TUNE[@]}" \
            --summary "$out.summary.json" -o "$out"
    fi
done
python3 - "$S" <<'PY'
import json, sys
s = sys.argv[1]
for n in (1, 2, 4):
    r = json.load(open(f"{s}/mpi-{n}.safetensors.summary.json"))
    print(f"mpi {n} ranks: {r['tokens']} tokens in {r['seconds']:.1f} s = "
          f"{r['tokens'] / r['seconds']:.0f} tok/s, final loss {r['final_train_loss']:.4f}")
PY
[ -f "$S/flower/server/federated-summary.json" ] || "$PYTHON" "$HERE/../../federated/local.py" \
    --package "$EMU" --client "$S/owner-a.jsonl" --client "$S/owner-b.jsonl" --rounds 2 \
    --tune-args "--max-steps 10 --batch-size 4 --block-size 256 --lr 1e-4" \
    --peft-args "--peft lora --lora-r 8" --offsite "$B" --timeout 3000 \
    --output "$S/flower/federated" --workdir "$S/flower"
"$B" inspect "$S/flower/federated"
