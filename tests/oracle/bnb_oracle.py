"""Oracle for kldq's NF4/FP4 formats: bitsandbytes' quantize_4bit / dequantize_4bit (CPU).

Writes <out>: for each case k, w_k (fp32 [out, in]), codes_k (uint8 packed, bitsandbytes' layout),
absmax_k (fp32), deq_k (fp32 dequantized by bitsandbytes), and for FP4 near_k (uint8 per element:
1 where bitsandbytes' CPU table, rounded to 4 decimals, puts the value in a different interval
than the exact FP4 values would).
"""
import sys

import torch
import bitsandbytes.functional as F
from safetensors.torch import save_file

EXACT_FP4 = torch.tensor([0.0, 1 / 192, 2 / 3, 1.0, 1 / 3, 0.5, 1 / 6, 0.25,
                          -0.0, -1 / 192, -2 / 3, -1.0, -1 / 3, -0.5, -1 / 6, -0.25])


def bucket(x, table):
    order = torch.argsort(table)
    mids = (table[order[:-1]] + table[order[1:]]) / 2
    return order[torch.bucketize(x, mids)]


def main():
    out = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    cases = [("nf4", 64, (172, 64)), ("nf4", 64, (64, 172)), ("nf4", 128, (37, 129)), ("nf4", 64, (256, 512)),
             ("fp4", 64, (172, 64)), ("fp4", 64, (64, 172)), ("fp4", 256, (33, 100))]
    t = {}
    for k, (qt, bs, shape) in enumerate(cases):
        w = torch.randn(shape, generator=g) * 0.05
        w[0, :5] = 0.0  # zeros, and an all-zero block when a block fits in them
        packed, state = F.quantize_4bit(w, blocksize=bs, quant_type=qt)
        t[f"w_{k}"] = w
        t[f"codes_{k}"] = packed.reshape(-1).contiguous()
        t[f"absmax_{k}"] = state.absmax.float().contiguous()
        t[f"deq_{k}"] = F.dequantize_4bit(packed, state).float().contiguous()
        t[f"meta_{k}"] = torch.tensor([bs, 1 if qt == "nf4" else 0])
        if qt == "fp4":
            flat = w.reshape(-1)
            n = flat.numel()
            blocks = (n + bs - 1) // bs
            am = torch.stack([flat[i * bs:(i + 1) * bs].abs().max() for i in range(blocks)]).clamp(min=1e-38)
            x = torch.clamp(flat * (1.0 / am.repeat_interleave(bs)[:n]), -1, 1)
            cpu_table = torch.tensor([round(v, 4) for v in EXACT_FP4.tolist()])
            t[f"near_{k}"] = (bucket(x, cpu_table) != bucket(x, EXACT_FP4)).to(torch.uint8)
    save_file(t, out)
    print(len(cases))


if __name__ == "__main__":
    main()
