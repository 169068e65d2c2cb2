#!/usr/bin/env bash
# Side-by-side speed/memory: offsite vs the PyTorch peer (../shared/peer), alternating modes so
# that machine noise hits both. Needs the peer's venv (see ../shared/peer/README.md) and the
# demo GGUF. Usage: bash docs/bench_vs_peer.sh [STEPS]
set -euo pipefail
STEPS=${1:-6}
B=${OFFSITE:-./target/release/offsite}
PY=${PEER_PYTHON:-$HOME/.cache/offsite-peer-venv/bin/python}
PEER=${PEER:-../shared/peer/bench_peer.py}
GGUF=$("$B" fetch smollm2)
DIR=$(dirname "$GGUF")
for pair in "infer:infer_full" "ot:offsite" "ot-lora:offsite_lora" "ft-lora:full_lora" "ft:full"; do
    ours=${pair%%:*}; theirs=${pair##*:}
    "$B" bench smollm2 --modes "$ours" --batch 4 --seq 128 --steps "$STEPS" --json
    "$PY" "$PEER" --gguf-dir "$DIR" --config "$theirs" --batch 4 --seq 128 --steps "$STEPS" 2>/dev/null | tail -n 1
done
