#!/usr/bin/env python3
"""Reference vectors for Gemma 3 270M (the Q4_K_M GGUF `offsite fetch gemma3-270m` caches),
dequantized to float32 by transformers' GGUF loader, for checking offsite's loader, tokenizer
and forward pass (tests/gemma3.rs).

usage: make_reference.py --gguf PATH --out DIR   (torch, transformers, gguf; see README.md)
"""
import argparse, hashlib, json, os, platform
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file

PARAGRAPH = (
    "The Industrial Revolution began in Great Britain in the late eighteenth century and soon "
    "spread to Western Europe and North America. New machines powered by water and steam "
    "transformed the production of textiles, iron and other goods, while railways and canals "
    "made it far cheaper to move raw materials and finished products over long distances."
)
PROMPTS = [
    "The capital of France is",
    PARAGRAPH,
    "def fibonacci(n):",
    # Longer than the 512-token sliding window of the local layers.
    " ".join([PARAGRAPH] * 10),
]
TRICKY = [
    "", " ", "  ", "Hello world", " Hello world", "  Hello  world  ", "Hello\nworld",
    "\n\n\nHello\n\n", "line1\r\nline2\ttabbed", "\t\tindented\n    four spaces",
    "naïve café résumé façade", "Ünïcödé ß ẞ İ ı", "日本語のテキストです。", "中文测试，标点符号！",
    "Ελληνικά και Русский текст", "مرحبا بالعالم",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷", "1234567890 3.14159 -42 1e-5 2,000,000",
    "don't I'm we'll they've she'd it's DON'T", "https://example.com/path?q=1&x=%20#frag",
    "x=1;y=2\nif (x) {\n\treturn y;\n}", "<start_of_turn>user\nhi<end_of_turn>\n",
    "<bos>text<eos>", "a\u0000b\u0007c\u007f", "\u00a0non-breaking\u2009thin\u200bzero-width",
    "ÿþ€£¥", "    def f(x):\n        return x ** 2  # comment", "<table><tr><td>cell</td></tr></table>",
    "\U0001f9ec\U0002a6d6 rare code points",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--gen-tokens", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import transformers, tokenizers
    from importlib.metadata import version as pkgver
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.split(os.path.abspath(args.gguf))
    sha = hashlib.sha256(open(args.gguf, "rb").read()).hexdigest()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f).eval()
    cfg = model.config
    out = {
        "model": {"gguf_file": f, "gguf_sha256": sha, "dtype": str(next(model.parameters()).dtype),
                  "attn_implementation": cfg._attn_implementation,
                  "config": json.loads(cfg.to_json_string())},
        "tokenizer": {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                      "pad_token_id": tok.pad_token_id, "unk_token_id": tok.unk_token_id,
                      "vocab_size": len(tok), "chat_template": tok.chat_template},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "gguf": pkgver("gguf"), "numpy": np.__version__},
        "prompts": [],
    }
    captured = {}

    def hook(name):
        def fn(mod, inp, outp):
            captured[name] = (outp[0] if isinstance(outp, tuple) else outp).detach().clone()
        return fn

    handles = [layer.register_forward_hook(hook(f"layer{i}")) for i, layer in enumerate(model.model.layers)]
    handles.append(model.model.norm.register_forward_hook(hook("final_norm")))
    tensors = {}
    for pi, text in enumerate(PROMPTS):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
        logp = F.log_softmax(logits.double(), dim=-1)
        ce = (-logp[:-1].gather(1, ids[0, 1:, None])[:, 0]).tolist()
        top = torch.topk(logits[-1], 10)
        rec = {"text": text, "ids": ids[0].tolist(), "mean_next_token_ce": float(np.mean(ce)),
               "next_token_ce_per_position": ce,
               "last_logits_top10": {"ids": top.indices.tolist(), "values": top.values.tolist()}}
        if pi == 0:
            tensors["p0.layer_out"] = torch.stack(
                [captured[f"layer{i}"][0] for i in range(cfg.num_hidden_layers)]).numpy()
            tensors["p0.final_norm"] = captured["final_norm"][0].numpy()
            tensors["p0.logits_last"] = logits[-1].numpy()
            for h in handles:
                h.remove()
        if pi < 3:
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=args.gen_tokens, do_sample=False)
            rec["greedy_continuation_ids"] = gen[0, ids.shape[1]:].tolist()
            rec["greedy_continuation_text"] = tok.decode(rec["greedy_continuation_ids"])
        out["prompts"].append(rec)

    cases = []
    for s in TRICKY:
        ids = tok(s)["input_ids"]
        cases.append({"text": s, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
    weights = []
    for name, p in model.named_parameters():
        w = p.detach().double()
        weights.append({"name": name, "shape": list(p.shape), "sum": float(w.sum()),
                        "sum_sq": float((w * w).sum()), "first8": p.detach().reshape(-1)[:8].tolist()})
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, f"{args.out}/reference.safetensors")
    with open(f"{args.out}/reference.json", "w") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
    with open(f"{args.out}/tokenizer_cases.json", "w") as fh:
        json.dump({"cases": cases}, fh, indent=1, ensure_ascii=False)
    with open(f"{args.out}/weight_checksums.json", "w") as fh:
        json.dump({"params": weights}, fh, indent=0)
    print(json.dumps([(len(p["ids"]), p["mean_next_token_ce"], p.get("greedy_continuation_text"))
                      for p in out["prompts"]], ensure_ascii=False))


if __name__ == "__main__":
    main()
