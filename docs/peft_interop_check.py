# Loads an offsite LoRA adapter directory with the Hugging Face peft library onto the original
# SmolLM2 GGUF and prints the mean CE of a sentence, base and adapted, to compare with
# `offsite score` on the plugged (merged) model. Usage: python peft_interop_check.py ADAPTER_DIR GGUF_DIR
import torch, json, sys, warnings
warnings.filterwarnings("ignore")
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
d=sys.argv[2]; f="SmolLM2-135M-Instruct.Q4_1.gguf"
tok=AutoTokenizer.from_pretrained(d, gguf_file=f)
m=AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
text="The capital of France is a city with a long history of art and politics."
ids=tok(text, return_tensors="pt").input_ids
def ce(model):
    with torch.no_grad():
        return model(ids, labels=ids).loss.item()
print("base", ce(m))
pm=PeftModel.from_pretrained(m, sys.argv[1])
print("peft", ce(pm), ids[0,:5].tolist())
