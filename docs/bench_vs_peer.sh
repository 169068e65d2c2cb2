#!/usr/bin/env bash
# Side-by-side speed/memory: offsite (f32, then with PRECISIONS' bf16 settings) vs the PyTorch peer
# (../shared/peer, f32), alternating per mode so that machine noise hits all of them. Needs the
# peer's venv (see ../shared/peer/README.md) and the demo GGUF.
# With PEER_AUTOCAST=1 (the default) the peer also runs under bf16 autocast (docs/peer_autocast.py).
# Usage: bash docs/bench_vs_peer.sh [STEPS]   (PRECISIONS="f32 bf16" by default)
set -euo pipefail
STEPS=${1:-6}
B=${OFFSITE:-./target/release/offsite}
PY=${PEER_PYTHON:-$HOME/.cache/offsite-peer-venv/bin/python}
PEER=${PEER:-../shared/peer/bench_peer.py}
PRECISIONS=${PRECISIONS:-f32 bf16}
GGUF=$("$B" fetch smollm2)
DIR=$(dirname "$GGUF")
for pair in "infer:infer_full" "ot:offsite" "ot-lora:offsite_lora" "ft-lora:full_lora" "ft:full"; do
    ours=${pair%%:*}; theirs=${pair##*:}
    for p in $PRECISIONS; do
        "$B" bench smollm2 --modes "$ours" --batch 4 --seq 128 --steps "$STEPS" --precision "$p" --json
    done
    "$PY" "$PEER" --gguf-dir "$DIR" --config "$theirs" --batch 4 --seq 128 --steps "$STEPS" 2>/dev/null | tail -n 1
    if [ "${PEER_AUTOCAST:-1}" = 1 ]; then
        PEER_DIR=$(dirname "$PEER") "$PY" "$(dirname "$0")/peer_autocast.py" --gguf-dir "$DIR" \
            --config "$theirs" --batch 4 --seq 128 --steps "$STEPS" 2>/dev/null | tail -n 1 | sed 's/^{/{"autocast": "bf16", /'
    fi
done
