"""Tables of docs/results/alignment.md from the outputs of alignment.sh (standard library only).

Usage: python3 alignment_table.py OUT_DIR [TASK_PREFIX ...]   (default prefix: hyp)
"""
import json
import os
import sys

ROWS = ["zero_shot", "emulator_zero_shot", "emulator_ft", "oracle", "plug_in", "proxy", "full_ft"]


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(out, prefixes):
    for p in prefixes:
        rows = {}
        rdir = f"{out}/{p}-k13/rows"
        for name in ROWS:
            if os.path.exists(f"{rdir}/{name}.json"):
                rows[name] = load(f"{rdir}/{name}.json")
        zs, ft = rows.get("zero_shot"), rows.get("full_ft")
        emu = rows.get("emulator_ft")
        print(f"\n### {p}\n\n| row | acc ± stderr | margin | share of full FT's gain |\n| --- | ---: | ---: | ---: |")
        def share(r):
            if not (zs and ft) or ft["acc"] == zs["acc"]:
                return "-"
            return f"{(r['acc'] - zs['acc']) / (ft['acc'] - zs['acc']):.0%}"
        for name, r in rows.items():
            print(f"| {name} | {r['acc']:.3f} ± {r['acc_stderr']:.3f} | {r['margin']:.3f} | {share(r)} |")
        adir = f"{out}/{p}-align"
        if not os.path.isdir(adir):
            continue
        print(
            "\n| alignment (target, positions, trained part, pull, corpus) | acc ± stderr | margin "
            "| share of full FT's gain | vs emulator fine-tuned | held-out KL before → after | seconds | tokens |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        for f in sorted(os.listdir(adir)):
            if not f.endswith(".json") or f.endswith(".inspect.json"):
                continue
            name = f[: -len(".json")]
            r = load(f"{adir}/{f}")
            info = f"{adir}/{name}.inspect.json"
            a = load(info)["alignment"] if os.path.exists(info) else None
            o = a["options"] if a else {}
            m = a["metrics"] if a else {}
            corpus = "templated words" if o.get("template") else "plain text"
            t = a["training"] if a else {}
            label = (
                f"{o.get('target')} (α {o.get('alpha')}), {o.get('positions')}, {o.get('params')}, "
                f"pull {o.get('pull')}, {corpus}, lr {t.get('lr')}"
            )
            gap = f"{r['acc'] - emu['acc']:+.3f}" if emu else "-"
            kl = m.get("best_val_loss")
            before = a.get("val_loss_before") if a else None
            kl_text = "-" if kl is None else f"{kl:.3f}"
            if before is not None:
                kl_text = f"{before:.3f} → {kl_text}"
            print(
                f"| `{name}`: {label} | {r['acc']:.3f} ± {r['acc_stderr']:.3f} | {r['margin']:.3f} "
                f"| {share(r)} | {gap} | {kl_text} "
                f"| {m.get('seconds', 0):.0f} | {m.get('tokens', 0)} |"
            )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["hyp"])
