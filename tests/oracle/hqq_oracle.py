"""Oracle for kldq's HQQ (--method hqq): the reference package's Quantizer.quantize (hqq 0.2.8,
CPU, fp32; its default solver optimize_weights_proximal_legacy), grouping along the input
dimension (axis=1) as kldq does.

Writes <out>: for each case k, w_k (fp32 [out, in]), codes_k (uint8 [out, in], unpacked),
scale_k and zero_k (fp32 [out, in / group], dequantization w = (code - zero) * scale), and
meta_k = [bits, group, round_zero].
"""
import sys

import torch
from hqq.core.quantize import Quantizer
from safetensors.torch import load_file, save_file


def main():
    out, model = sys.argv[1], sys.argv[2]
    real = load_file(model)
    g = torch.Generator().manual_seed(0)
    heavy = torch.randn((96, 256), generator=g) * 0.02
    heavy[3, 7] = 0.5  # an outlier: the l_p (p < 1) fit should not chase it
    heavy[5, :64] = 0.01  # a flat group: its range falls below hqq's 1e-4 guard
    weights = [
        real["model.layers.0.self_attn.q_proj.weight"].float(),
        real["model.layers.1.mlp.down_proj.weight"].float(),
        heavy,
    ]
    cases = [(0, 4, 64, True), (1, 4, 128, True), (2, 4, 64, True), (0, 3, 64, False),
             (1, 2, 32, False), (2, 2, 32, False), (0, 4, 32, False)]
    t = {}
    for k, (wi, bits, group, round_zero) in enumerate(cases):
        w = weights[wi].contiguous()
        codes, meta = Quantizer.quantize(w, nbits=bits, channel_wise=True, group_size=group,
                                         optimize=True, round_zero=round_zero, axis=1,
                                         bitpack=False, device="cpu")
        rows = w.shape[0]
        t[f"w_{k}"] = w.clone()
        t[f"codes_{k}"] = codes.reshape(w.shape).to(torch.uint8).contiguous()
        t[f"scale_{k}"] = meta["scale"].float().reshape(rows, -1).contiguous()
        t[f"zero_{k}"] = meta["zero"].float().reshape(rows, -1).contiguous()
        t[f"meta_{k}"] = torch.tensor([bits, group, int(round_zero)])
    save_file(t, out)


if __name__ == "__main__":
    main()
