"""kldq vs transformers on one checkpoint, in bf16 on the GPU (issue 2 acceptance).

Runs the same random token windows through transformers (sdpa attention) and through
`kldq logits`, both in bf16, and reports the mean KL(P_hf || P_kldq) over all next-token
distributions (fp32 log-softmax) and the top-1 agreement. For scale, both are also compared with
transformers in fp32. Exits 1 when KL >= 1e-3 or agreement < 99 %.
"""
import argparse, json, os, subprocess, sys, tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def kl_top1(ref_logits, q_logits):
    lp = F.log_softmax(ref_logits.float(), -1)
    lq = F.log_softmax(q_logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    top1 = (ref_logits.argmax(-1) == q_logits.argmax(-1)).float()
    return kl.mean().item(), top1.mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kldq", required=True)
    ap.add_argument("--model", required=True, action="append", help="checkpoint (repeatable)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    results = [compare(a, m) for m in a.model]
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    sys.exit(0 if all(r["pass"] for r in results) else 1)


def compare(a, model_dir):
    with tempfile.TemporaryDirectory() as tmp:
        return compare_in(a, model_dir, tmp)


def compare_in(a, model_dir, tmp):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    vocab = model.config.vocab_size
    seq_len = min(a.seq_len, model.config.max_position_embeddings)
    ids = torch.randint(0, min(vocab, 151000), (a.batch, seq_len))
    ids_path = os.path.join(tmp, "ids.json")
    with open(ids_path, "w") as f:
        json.dump(ids.tolist(), f)
    with torch.inference_mode():
        hf_bf16 = model(ids.cuda()).logits.float()
        model = model.float()
        hf_fp32 = model(ids.cuda()).logits.float()
    del model
    out_path = os.path.join(tmp, "kldq.safetensors")
    subprocess.run([a.kldq, "-q", "logits", model_dir, "--ids", ids_path, "-o", out_path,
                    "--device", "cuda", "--dtype", "bf16"], check=True)
    kq = load_file(out_path)["logits"].cuda()
    kl, top1 = kl_top1(hf_bf16, kq)
    kl_hf32_hf16, top1_hf32_hf16 = kl_top1(hf_fp32, hf_bf16)
    kl_hf32_k16, top1_hf32_k16 = kl_top1(hf_fp32, kq)
    # Positions whose two best bf16 logits tie exactly: argmax there is decided by index order.
    top2 = hf_bf16.topk(2, -1).values
    ties = (top2[..., 0] == top2[..., 1]).float().mean().item()
    res = {"what": "hf_parity_bf16", "model": model_dir, "gpu": torch.cuda.get_device_name(),
           "tokens": a.batch * seq_len, "kl_hf_bf16_vs_kldq_bf16": kl, "top1_agree": top1,
           "identical_logits": bool(torch.equal(hf_bf16, kq)), "top1_exact_ties_hf_bf16": ties,
           "kl_hf_fp32_vs_hf_bf16": kl_hf32_hf16, "top1_hf_fp32_vs_hf_bf16": top1_hf32_hf16,
           "kl_hf_fp32_vs_kldq_bf16": kl_hf32_k16, "top1_hf_fp32_vs_kldq_bf16": top1_hf32_k16}
    res["pass"] = kl < 1e-3 and top1 >= 0.99
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
