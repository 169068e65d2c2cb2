#!/usr/bin/env python3
"""Where the spam plug-in loses its gain: per-class mean log-odds ll(" yes") - ll(" no"), their
gap, ROC AUC and accuracy of each `eval --scores` file emulators.sh wrote (standard library only).

Usage: python3 log_odds.py OUT_DIR
"""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
names = [("zero", "full model, zero-shot"), ("emuzs", "emulator, zero-shot"),
         ("emuft", "emulator, fine-tuned"), ("plug", "plug-in"),
         ("top-only", "plug-in, top layers tuned only"),
         ("bottom-only", "plug-in, bottom layers tuned only"), ("sgd-plug", "plug-in, SGD tuning"),
         ("lr3e-5-plug", "plug-in, AdamW lr 3e-5"),
         ("long150-plug", "plug-in, 150 steps, template-aware emulator (200 records)")]


def auc(pos, neg):
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


print("| row | ham log-odds | spam log-odds | gap | AUC | acc |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for key, label in names:
    path = out / f"sc-{key}.jsonl"
    if not path.is_file():
        continue
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by = {0: [], 1: []}
    right = 0
    for r in rows:
        s = r["logliks"][1] - r["logliks"][0]
        by[r["label"]].append(s)
        right += (1 if s > 0 else 0) == r["label"]
    ham, spam = (sum(v) / len(v) for v in (by[0], by[1]))
    print(f"| {label} | {ham:.2f} | {spam:.2f} | {spam - ham:+.2f} | {auc(by[1], by[0]):.3f} | {right / len(rows):.2f} |")
