"""Oracle for the profile's proxies (tests/profile/test_proxies.cpp), computed with transformers.

Usage: proxy_oracle.py MODEL IDS_JSON BATCH OUT.safetensors
MODEL is an HF checkpoint directory, IDS_JSON a JSON list of N token-id windows of T tokens.
For every decoder linear layer NAME (model.layers.i.self_attn.q_proj, ...) writes, in fp32 on the
CPU:
  NAME.weight   [out, in]  the checkpoint's weight as transformers loaded it
  NAME.input    [N*T, in]  the layer's input on every window (forward pre-hooks), window-major
  NAME.output   [N*T, out] the layer's output (forward hooks)
  NAME.fisher   [out, in]  float64: sum over batches of BATCH windows (in order, the last one
                           possibly partial) of grad^2, the gradient of the batch's mean
                           next-token cross-entropy (the model's own loss with labels = inputs)
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def main():
    model_dir, ids_file, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(json.load(open(ids_file)), dtype=torch.long)
    linears = {n: m for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    inputs = {n: [] for n in linears}
    outputs = {n: [] for n in linears}

    def hook(name):
        def fn(module, args, result):
            inputs[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).clone())
            outputs[name].append(result.detach().reshape(-1, result.shape[-1]).clone())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for w in range(0, ids.shape[0], batch):
            model(input_ids=ids[w:w + batch])
    for h in handles:
        h.remove()

    for p in model.parameters():
        p.requires_grad_(False)
    for m in linears.values():
        m.weight.requires_grad_(True)
    fisher = {n: torch.zeros_like(m.weight, dtype=torch.float64) for n, m in linears.items()}
    for w in range(0, ids.shape[0], batch):
        x = ids[w:w + batch]
        model(input_ids=x, labels=x).loss.backward()
        for n, m in linears.items():
            fisher[n] += m.weight.grad.double() ** 2
            m.weight.grad = None

    tensors = {}
    for n, m in linears.items():
        tensors[n + ".weight"] = m.weight.detach().contiguous()
        tensors[n + ".input"] = torch.cat(inputs[n]).contiguous()
        tensors[n + ".output"] = torch.cat(outputs[n]).contiguous()
        tensors[n + ".fisher"] = fisher[n].contiguous()
    save_file(tensors, out)


if __name__ == "__main__":
    main()
