"""The PyTorch peer (../shared/peer/bench_peer.py) with its forward (and so its backward) under
torch.autocast(bfloat16) on the CPU: the same mixed precision as `offsite --precision bf16`, so
that bf16 figures can be compared with bf16 figures. Arguments are the peer's.
Usage: python docs/peer_autocast.py --gguf-dir DIR --config offsite [...]"""
import functools
import os
import sys

import torch

PEER_DIR = os.environ.get("PEER_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer"))
sys.path.insert(0, os.path.abspath(PEER_DIR))
import bench_peer  # noqa: E402

_load = bench_peer.load_model


def load_model(args):
    model = _load(args)
    forward = model.forward

    @functools.wraps(forward)
    def autocast_forward(*a, **k):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*a, **k)

    model.forward = autocast_forward
    return model


bench_peer.load_model = load_model
if __name__ == "__main__":
    bench_peer.main()
