"""Oracle for kldq's generation tests: transformers' greedy `generate` in fp32 on the CPU.

Reads a JSON request {"model": DIR, "prompts": [[ids...], ...], "batches": [[i, j, ...], ...],
"max_new_tokens": N} (optional "device", "dtype": "bfloat16") and prints {"new": [[ids...], ...]} in prompt order: each prompt's new
tokens up to and including the first end-of-sequence id. Prompts of one batch are left-padded
together (attention mask and positions as transformers makes them), so a batch of different
lengths is checked too.
"""
import json, sys

import torch
from transformers import AutoModelForCausalLM


def main():
    req = json.load(open(sys.argv[1]))
    dtype = getattr(torch, req.get("dtype", "float32"))
    device = req.get("device", "cpu")
    model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=dtype,
                                                 attn_implementation="sdpa").to(device).eval()
    eos = model.generation_config.eos_token_id
    eos = {e for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    pad = min(eos) if eos else 0  # a synthesized checkpoint names no end-of-sequence id
    prompts = req["prompts"]
    new = [None] * len(prompts)
    for batch in req["batches"]:
        longest = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for r, i in enumerate(batch):
            p = prompts[i]
            ids[r, longest - len(p):] = torch.tensor(p)
            mask[r, longest - len(p):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=req["max_new_tokens"], pad_token_id=pad,
                                 min_new_tokens=0)
        for r, i in enumerate(batch):
            toks = out[r, longest:].cpu().tolist()
            for k, t in enumerate(toks):
                if t in eos:
                    toks = toks[:k + 1]
                    break
            new[i] = toks
    print(json.dumps({"new": new}))


if __name__ == "__main__":
    main()
