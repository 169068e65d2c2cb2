"""Public alignment corpora for docs/results/alignment.md (Python 3 standard library only).

The model owner aligns the plugged adapter on public text only, never the data owner's records.
This writes, from a corpus that is not the task's (argument 1, JSONL {"text"}):

- words.jsonl: {"text": word} for 2,000 content words of that corpus (lowercase, 4-12 letters,
  the 150 most frequent words left out as function words), in a fixed shuffled order: the
  slot filler of a task template such as "Question: A {text} is a kind of what?\\nAnswer:";
- paragraphs.jsonl: {"text": paragraph} for its paragraphs of 200-1200 characters (cut at a word
  boundary), for templates that hold a document (spam's "Subject: {text} ... Answer:").

Usage: python3 alignment_corpora.py PUBLIC.jsonl OUT_DIR
"""
import collections
import json
import random
import re
import sys


def main(src, out):
    texts = [json.loads(line)["text"] for line in open(src, encoding="utf-8")]
    counts = collections.Counter(
        w for t in texts for w in re.findall(r"\b[a-z]{4,12}\b", t)
    )
    ranked = [w for w, _ in counts.most_common()]
    words = ranked[150:2150]
    random.Random(0).shuffle(words)
    with open(f"{out}/words.jsonl", "w", encoding="utf-8") as f:
        for w in words:
            f.write(json.dumps({"text": w}) + "\n")
    paragraphs = []
    for t in texts:
        for p in re.split(r"(?<=[.!?])\s+(?=[A-Z])", t):
            if len(p) >= 200:
                paragraphs.append(p[:1200].rsplit(" ", 1)[0] if len(p) > 1200 else p)
    random.Random(1).shuffle(paragraphs)
    with open(f"{out}/paragraphs.jsonl", "w", encoding="utf-8") as f:
        for p in paragraphs[:2000]:
            f.write(json.dumps({"text": p}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
