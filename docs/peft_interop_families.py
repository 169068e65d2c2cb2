# Loads an offsite LoRA adapter directory with the Hugging Face peft library onto a Hugging Face
# model directory of any family offsite supports (GPT-2, OPT, BLOOM, LLaMA, Qwen2, Gemma 3) and
# prints the mean CE of an id sequence, base and adapted, to compare with
# `offsite score MODEL --ids …` and `offsite score PLUGGED --ids …` (PLUGGED = `offsite plug`'s
# output). GPT-2's adapters carry `fan_in_fan_out: true` for its Conv1D weights.
# Usage: python peft_interop_families.py MODEL_DIR ADAPTER_DIR 5,17,300,42
import sys, warnings
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

warnings.filterwarnings("ignore")
model_dir, adapter_dir, ids = sys.argv[1], sys.argv[2], sys.argv[3]
ids = torch.tensor([[int(i) for i in ids.split(",")]])
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")


def ce(model):
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()


print("base", ce(m))
print("peft", ce(PeftModel.from_pretrained(m, adapter_dir)))
