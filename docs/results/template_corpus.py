#!/usr/bin/env python3
"""A prompt-format distillation corpus for the model owner, made of public text only: windows of
30-90 words of the State of the Union training split, each wrapped in the spam task's prompt
template ("Subject: …\\n\\n<text>\\n\\nQuestion: Is this email spam?\\nAnswer:"). It knows the task's
prompt (which lm-eval-style tasks publish) but none of the data owner's e-mails. Standard library
only, seeded. Usage: python3 template_corpus.py SOTU_TRAIN.jsonl TRAIN_OUT.jsonl VAL_OUT.jsonl
"""
import json
import random
import sys

src, train_out, val_out = sys.argv[1:4]
random.seed(0)
docs = [json.loads(line)["text"] for line in open(src)]
chunks = []
for d in docs:
    w = d.split()
    for i in range(0, len(w) - 80, 80):
        chunks.append(w[i:i + random.randint(30, 90)])
random.shuffle(chunks)
lines = []
for w in chunks[:4000]:
    subject = " ".join(w[:random.randint(3, 7)]).strip(".,;:")
    text = f"Subject: {subject}\n\n{' '.join(w)}\n\nQuestion: Is this email spam?\nAnswer:"
    lines.append(json.dumps({"text": text}))
open(train_out, "w").write("\n".join(lines[:3900]) + "\n")
open(val_out, "w").write("\n".join(lines[3900:]) + "\n")
