#!/usr/bin/env python3
"""The Markdown table of one `docs/bench_vs_peer.sh` run (its JSON lines on stdin or in FILE):
per mode, offsite at each precision it ran, the peer in f32 and under bf16 autocast, the ratios
of offsite's fastest precision to both, and the peak RSS of that row against the peer's f32.
Usage: bash docs/bench_vs_peer.sh 6 > run.jsonl; python3 docs/bench_table.py run.jsonl"""
import json
import sys

PEER = {"infer_full": "infer", "offsite": "ot", "offsite_lora": "ot-lora",
        "full_lora": "ft-lora", "full": "ft"}
NAMES = {"infer": "inference (`infer` / `infer_full`)",
         "ot": "offsite-tuning 2-13-2 (`ot` / `offsite`)",
         "ot-lora": "offsite-tuning + LoRA r8 (`ot-lora` / `offsite_lora`)",
         "ft-lora": "full-model LoRA r8 (`ft-lora` / `full_lora`)",
         "ft": "full fine-tuning (`ft` / `full`)"}


def main():
    lines = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    ours, peer, peer_bf16, precisions = {}, {}, {}, []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "mode" in r and "tokens_per_s" in r:
            p = r["precision"]
            precisions += [p] if p not in precisions else []
            ours[(r["mode"], p)] = (r["tokens_per_s"], r["peak_rss_mb"])
        elif "config" in r:
            target = peer_bf16 if r.get("autocast") else peer
            target[PEER[r["config"]]] = (r["tokens_per_s_median"], r["peak_rss_loop_mb"])
    best = precisions[-1]
    head = [f"offsite {p}" for p in precisions] + ["peer f32", "peer bf16 (autocast)",
            f"{best} / peer f32", f"{best} / peer bf16", f"RSS {best} / peer f32"]
    print("| mode | " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * len(head))
    for mode, name in NAMES.items():
        if (mode, best) not in ours:
            continue
        cells = [f"{ours[(mode, p)][0]:.1f}" if (mode, p) in ours else "—" for p in precisions]
        tps, rss = ours[(mode, best)]
        pf, pb = peer.get(mode), peer_bf16.get(mode)
        cells += [f"{pf[0]:.1f}" if pf else "—", f"{pb[0]:.1f}" if pb else "—",
                  f"**{tps / pf[0]:.2f}×**" if pf else "—", f"{tps / pb[0]:.2f}×" if pb else "—",
                  f"{rss:.0f} / {pf[1]:.0f} MB ({rss / pf[1]:.2f}×)" if pf else "—"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
