"""What the server and client apps share: running the `offsite` binary, and moving adapter
tensors between adapter files and Flower's ArrayRecord (only these tensors travel)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord
from safetensors.numpy import load_file, save_file

# A LoRA adapter is a PEFT directory whose tensors are in this file (the Rust side's layout).
PEFT_WEIGHTS = "adapter_model.safetensors"


def run_offsite(binary: str, args: list[str]) -> str:
    """Runs `offsite ARGS`; its standard output, or an error carrying its message."""
    done = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"offsite {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def weights_file(adapter: Path) -> Path:
    """The safetensors file holding an adapter's tensors (itself, or a PEFT directory's)."""
    return adapter / PEFT_WEIGHTS if adapter.is_dir() else adapter


def read_arrays(adapter: Path) -> ArrayRecord:
    """An adapter's tensors, by name, as Flower arrays."""
    tensors = load_file(weights_file(adapter))
    return ArrayRecord({k: Array(np.ascontiguousarray(tensors[k])) for k in sorted(tensors)})


def write_arrays(record: ArrayRecord, path: Path) -> None:
    """Writes Flower arrays as a plain safetensors file, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v.numpy()) for k, v in record.items()}, str(tmp))
    os.replace(tmp, path)


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of tensor data in `record` (what one transfer of it carries)."""
    return sum(v.numpy().nbytes for v in record.values())
