#!/usr/bin/env python3
"""Tables and the privacy-utility chart of docs/results/emulators.md from the folders that
emulators.sh wrote (standard library only). Usage: python3 emulators_table.py OUT_DIR"""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def load(p):
    return json.loads(p.read_text()) if p.is_file() else None


def rows_of(report):
    return {r["name"]: r for r in report["rows"]}


points = {"spam": [], "sotu": []}
for task, key, fmt in [("spam", "acc", "{:.3f}"), ("sotu", "token_perplexity", "{:.2f}")]:
    print(f"\n### {task}\n")
    print("| run | strategy | K | stored layers | run layers | % params | MB | cos (sotu/spam) | rel err (sotu/spam) "
          "| KL sotu | ppl sotu (emu/full) | zero-shot | emulator zero-shot | emulator fine-tuned "
          "| oracle | plug-in | full fine-tuning |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for d in sorted(out.glob(f"{task}-k*-*")):
        report = load(d / "report.json")
        inspect = load(d / "inspect.json")
        if report is None or inspect is None:
            continue
        probes = {n: load(d / f"probe-{n}.json") for n in ("sotu", "spam")}
        rows = rows_of(report)
        strategy = report.get("strategy", "uniform")
        k = report["emulator"]["keep"]

        def cell(name):
            r = rows.get(name)
            if r is None or key not in r:
                return "-"
            s = fmt.format(r[key])
            if task == "spam":
                s += f" ± {r['acc_stderr']:.3f}"
            return s

        def probe(field):
            vals = [p["hidden"][field] if p else float("nan") for p in probes.values()]
            return " / ".join(f"{v:.3f}" for v in vals)

        ps = probes["sotu"]
        print(f"| {d.name} | {strategy} | {k} | {len(inspect['stored_emulator_layers'])} | {len(inspect['emulator_layers'])} "
              f"| {inspect['percent_of_full']:.1f} | {inspect['file_bytes'] / 1e6:.0f} | {probe('cosine')} | {probe('rel_l2')} "
              f"| {ps['kl']:.3f} | {ps['emulator_perplexity']:.1f} / {ps['full_perplexity']:.1f} "
              f"| {cell('zero_shot')} | {cell('emulator_zero_shot')} | {cell('emulator_ft')} | {cell('oracle')} "
              f"| {cell('plug_in')} | {cell('full_ft')} |")
        e, p = rows.get("emulator_ft", {}).get(key), rows.get("plug_in", {}).get(key)
        if e is not None and p is not None:
            points[task].append((d.name, e, p))

# The privacy-utility chart: what the data owner gets through the emulator (x) against what the
# plugged-in model gives (y); the further a point sits above the diagonal, the more the model
# owner keeps.
W, H, M = 640, 320, 50
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">']
for i, (task, label, lo, hi) in enumerate([("spam", "accuracy", 0.4, 1.0), ("sotu", "token perplexity", 20, 400)]):
    x0 = i * W // 2 + M
    w, h = W // 2 - M - 10, H - 2 * M
    sx = lambda v: x0 + (v - lo) / (hi - lo) * w
    sy = lambda v: M + h - (v - lo) / (hi - lo) * h
    svg.append(f'<rect x="{x0}" y="{M}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    svg.append(f'<line x1="{sx(lo)}" y1="{sy(lo)}" x2="{sx(hi)}" y2="{sy(hi)}" stroke="#ccc" stroke-dasharray="4"/>')
    svg.append(f'<text x="{x0}" y="{M - 8}">{task}: plug-in vs emulator fine-tuned ({label})</text>')
    svg.append(f'<text x="{x0}" y="{M + h + 16}">emulator fine-tuned {lo}–{hi}</text>')
    for name, e, p in points[task]:
        e, p = min(max(e, lo), hi), min(max(p, lo), hi)
        svg.append(f'<circle cx="{sx(e):.1f}" cy="{sy(p):.1f}" r="4" fill="#36c"/>')
        svg.append(f'<text x="{sx(e) + 6:.1f}" y="{sy(p) - 4:.1f}">{name}</text>')
svg.append("</svg>")
(out / "privacy-utility.svg").write_text("\n".join(svg) + "\n")
print(f"\nchart: {out / 'privacy-utility.svg'}")
