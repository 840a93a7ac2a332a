"""Oracle for kldq's decoder tests: transformers builds and runs the reference models.

For each case it writes <workdir>/<case>/ref.safetensors holding token-id batches (ids_K) and
the logits transformers computes for them in fp32 on the CPU (logits_K). Cases:
  qwen2-random   a random Qwen2ForCausalLM (GQA, tied embeddings, q/k/v biases), save_pretrained
  llama-random   a random LlamaForCausalLM (head_dim != hidden/heads, attention and MLP biases,
                 untied head), saved in shards with model.safetensors.index.json
  <name>=<dir>   an existing checkpoint directory (stories260k, kldq synth output)
Weights are drawn with a larger spread than transformers' initializer (norms ~1 + N(0, 0.1),
the rest ~N(0, 0.1)) so that biases, norm weights and attention patterns all matter.
"""
import argparse, json, os, sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(1.0 + noise if "norm" in name else noise)


def make_qwen2(path):
    cfg = Qwen2Config(hidden_size=64, intermediate_size=172, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, max_position_embeddings=128, rms_norm_eps=1e-6,
                      rope_theta=10000.0, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    randomize(model, 1)
    model.save_pretrained(path)


def make_llama(path):
    cfg = LlamaConfig(hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                      attention_bias=True, mlp_bias=True)
    model = LlamaForCausalLM(cfg)
    randomize(model, 2)
    model.save_pretrained(path, max_shard_size="60KB")


def reference(model_dir, out_path, seed):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, vocab, (3, 40), generator=g), torch.randint(0, vocab, (1, 17), generator=g)]
    tensors = {}
    with torch.inference_mode():
        for k, ids in enumerate(batches):
            tensors[f"ids_{k}"] = ids.contiguous()
            tensors[f"logits_{k}"] = model(ids).logits.float().contiguous()
    save_file(tensors, out_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("cases", nargs="+")
    a = ap.parse_args()
    torch.manual_seed(0)
    done = {}
    for i, case in enumerate(a.cases):
        name, _, existing = case.partition("=")
        case_dir = os.path.join(a.workdir, name)
        os.makedirs(case_dir, exist_ok=True)
        model_dir = existing or os.path.join(case_dir, "model")
        if name == "qwen2-random":
            make_qwen2(model_dir)
        elif name == "llama-random":
            make_llama(model_dir)
        elif not existing:
            sys.exit(f"unknown case {case}")
        reference(model_dir, os.path.join(case_dir, "ref.safetensors"), seed=100 + i)
        done[name] = model_dir
    print(json.dumps(done))


if __name__ == "__main__":
    main()
