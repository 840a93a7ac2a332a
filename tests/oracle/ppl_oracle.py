"""Oracle for kldq's perplexity protocols, computed with transformers and tokenizers.

Usage: ppl_oracle.py MODEL TEXT PROTOCOL CTX [STRIDE]
TEXT: a .jsonl file (rows' "text" joined with "\\n\\n") or a text file used whole.
PROTOCOL:
  gptq      non-overlapping windows of CTX tokens, every next-token prediction scored
  llamacpp  as llama.cpp's llama-perplexity: the text tokenized with BOS in front (when the
            tokenizer adds one), windows of CTX with each window's first token replaced by BOS,
            predictions of tokens CTX/2+1 .. CTX-1 scored
  sliding   the Hugging Face "perplexity of fixed-length models" stride loop (labels -100 outside
            the target span), STRIDE default CTX/2
Prints JSON {"ppl", "nll_mean", "tokens", "windows"} computed in fp32 on the CPU (sums in fp64).
"""
import json
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def read_text(path):
    if path.endswith(".jsonl"):
        return "\n\n".join(json.loads(l)["text"] for l in open(path, encoding="utf-8") if l.strip())
    return open(path, encoding="utf-8", newline="").read()


def main():
    model_dir, text_file, protocol, ctx = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stride = int(sys.argv[5]) if len(sys.argv) > 5 else ctx // 2
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    text = read_text(text_file)
    # llama.cpp tokenizes with BOS (when the tokenizer adds one); GPTQ-style and HF stride
    # evaluation here use the text's tokens alone.
    ids = tok.encode(text, add_special_tokens=(protocol == "llamacpp")).ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count, windows = 0.0, 0, 0
    with torch.no_grad():
        if protocol in ("gptq", "llamacpp"):
            plain, special = tok.encode("a", add_special_tokens=False).ids, tok.encode("a").ids
            adds_bos = len(special) > len(plain) and special[1:len(plain) + 1] == plain
            bos = special[0] if protocol == "llamacpp" and adds_bos else None
            first = 0 if protocol == "gptq" else ctx // 2
            for start in range(0, len(ids) - ctx + 1, ctx):
                w = torch.tensor(ids[start:start + ctx])
                if bos is not None:
                    w[0] = bos
                lp = torch.log_softmax(model(w[None]).logits[0].float(), -1)
                nll = -lp[first:ctx - 1].gather(1, w[first + 1:, None])[:, 0]
                total += nll.double().sum().item()
                count += nll.numel()
                windows += 1
        elif protocol == "sliding":
            seq = torch.tensor(ids)[None]
            prev_end = 0
            for begin in range(0, seq.size(1), stride):
                end = min(begin + ctx, seq.size(1))
                trg_len = end - prev_end
                input_ids = seq[:, begin:end]
                target = input_ids.clone()
                target[:, :-trg_len] = -100
                logits = model(input_ids).logits[0, :-1].float()
                labels = target[0, 1:]
                keep = labels != -100
                lp = torch.log_softmax(logits[keep], -1)
                nll = -lp.gather(1, labels[keep][:, None])[:, 0]
                total += nll.double().sum().item()
                count += nll.numel()
                windows += 1
                prev_end = end
                if end == seq.size(1):
                    break
        else:
            sys.exit(f"unknown protocol {protocol}")
    mean = total / count
    print(json.dumps({"ppl": float(torch.tensor(mean).exp()), "nll_mean": mean, "tokens": count,
                      "windows": windows}))


if __name__ == "__main__":
    main()
