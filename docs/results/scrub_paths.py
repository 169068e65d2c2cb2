"""Rewrites the machine paths in reports committed before reports named files by sha256
(issue 33) into the relative form the scripts here type (Python 3 standard library only).

Reports written since then name every file by name and sha256 and record the command line as
typed; older report folders cannot all be regenerated (their run folders are gone), so their
paths are rewritten once, by this fixed map, to what the scripts would have typed:
the model cache file -> `smollm2`, the shared data -> `../shared/data/…`, an output folder
(`/work/runs`, `/tmp/NAME`) -> `OUT/…`.

Usage: python3 docs/results/scrub_paths.py docs/results
"""
import pathlib
import re
import sys

RULES = [
    (re.compile(r"/root/\.cache/offsite/smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf"), "smollm2"),
    (re.compile(r"/work/shared/data/"), "../shared/data/"),
    (re.compile(r"/work/runs/"), "OUT/"),
    (re.compile(r"/work/runs\b"), "OUT"),
    (re.compile(r"/tmp/[A-Za-z0-9._-]+/"), "OUT/"),
    (re.compile(r"/tmp/([A-Za-z0-9._-]+)"), r"OUT/\1"),
]


def main(root):
    changed = 0
    for path in pathlib.Path(root).rglob("*"):
        if path.suffix not in {".md", ".json", ".jsonl", ".svg"}:
            continue
        text = path.read_text(encoding="utf-8")
        new = text
        for pattern, repl in RULES:
            new = pattern.sub(repl, new)
        if new != text:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(new, encoding="utf-8")
            tmp.replace(path)
            changed += 1
    print(f"{changed} files rewritten")


if __name__ == "__main__":
    main(sys.argv[1])
