"""Oracle for `kldq eval` (gptq perplexity protocol and KL statistics) using transformers.

Usage: eval_oracle.py MODEL QUANTIZED TEXT_FILE CTX
MODEL is an HF checkpoint; QUANTIZED is a kldq nf4 checkpoint of it, dequantized here from the
safetensors layout docs/FORMATS.md documents (independently of kldq's code): weight_packed holds
two NF4 codes per byte (first element in the high nibble), weight_scale one fp32 absmax per block
of 64 of the flattened weight. Tokenizes the whole file with tokenizers (no special tokens),
scores non-overlapping windows of CTX tokens in fp32 and prints JSON with both perplexities and
the KL statistics.
"""
import json
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)


def dequant_nf4(packed, absmax, shape):
    codes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[: shape[0] * shape[1]]
    vals = NF4[codes] * np.repeat(absmax, 64)[: codes.size]
    return vals.reshape(shape)


def main():
    model_dir, qdir, text_file, ctx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ref = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    q = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tensors = load_file(f"{qdir}/model.safetensors")
    params = dict(q.named_parameters())
    for name in [n[: -len(".weight_packed")] for n in tensors if n.endswith(".weight_packed")]:
        w = params[name + ".weight"]
        deq = dequant_nf4(tensors[name + ".weight_packed"], tensors[name + ".weight_scale"], tuple(w.shape))
        with torch.no_grad():
            w.copy_(torch.from_numpy(deq))
    text = open(text_file, encoding="utf-8").read()
    ids = Tokenizer.from_file(f"{model_dir}/tokenizer.json").encode(text, add_special_tokens=False).ids
    n = len(ids) // ctx
    windows = torch.tensor(ids[: n * ctx]).view(n, ctx)
    nll, nll_ref, kl, same = [], [], [], []
    with torch.no_grad():
        for w in windows:
            lq = torch.log_softmax(q(w[None]).logits[0, :-1].double(), -1)
            lr = torch.log_softmax(ref(w[None]).logits[0, :-1].double(), -1)
            tgt = w[1:, None]
            nll.append(-lq.gather(1, tgt)[:, 0])
            nll_ref.append(-lr.gather(1, tgt)[:, 0])
            kl.append((lr.exp() * (lr - lq)).sum(-1))
            same.append((lr.argmax(-1) == lq.argmax(-1)).double())
    nll, nll_ref, kl, same = (torch.cat(v).numpy() for v in (nll, nll_ref, kl, same))
    diff = nll - nll_ref
    dp = np.exp(-nll) - np.exp(-nll_ref)
    print(json.dumps({
        "tokens": int(nll.size), "windows": n,
        "ppl": float(np.exp(nll.mean())), "reference_ppl": float(np.exp(nll_ref.mean())),
        "kl_mean": float(kl.mean()), "kl_stderr": float(kl.std(ddof=1) / np.sqrt(kl.size)),
        "kl_median": float(np.percentile(kl, 50)), "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()), "same_top1": float(same.mean()),
        "delta_p_mean": float(dp.mean()), "delta_p_rms": float(np.sqrt((dp ** 2).mean())),
        "ln_ppl_ratio": float(diff.mean()),
        "ln_ppl_ratio_stderr": float(diff.std(ddof=1) / np.sqrt(diff.size)),
    }))


if __name__ == "__main__":
    main()
