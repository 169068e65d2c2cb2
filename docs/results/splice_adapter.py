#!/usr/bin/env python3
"""Copy a tuned adapter, reverting some of its layers to the untuned values an emulator package
holds (standard library only): which adapter layers carry the plug-in's change.

Usage: python3 splice_adapter.py ADAPTER.safetensors PACKAGE.offsite OUT.safetensors LAYERS
  LAYERS: comma-separated original layer indices to revert, e.g. 0,1
"""
import json
import struct
import sys


def read_header(path):
    f = open(path, "rb")
    n = struct.unpack("<Q", f.read(8))[0]
    return json.loads(f.read(n)), 8 + n, f


def main():
    adapter, package, out, layers = sys.argv[1:5]
    revert = set(layers.split(","))
    tuned, tuned_base, tuned_f = read_header(adapter)
    untuned, untuned_base, untuned_f = read_header(package)
    header, blobs, offset = {"__metadata__": tuned["__metadata__"]}, [], 0
    for name, info in tuned.items():
        if name == "__metadata__":
            continue
        parts = name.split(".")
        use_untuned = name.startswith("model.layers.") and parts[2] in revert
        h, base, f = (untuned, untuned_base, untuned_f) if use_untuned else (tuned, tuned_base, tuned_f)
        if h[name]["dtype"] != info["dtype"] or h[name]["shape"] != info["shape"]:
            sys.exit(f"{package}: {name} has another dtype or shape than in {adapter}")
        start, end = h[name]["data_offsets"]
        f.seek(base + start)
        data = f.read(end - start)
        header[name] = {"dtype": info["dtype"], "shape": info["shape"],
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(out + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    import os
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
