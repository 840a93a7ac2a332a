#!/usr/bin/env python3
"""Train the embedded demo model: a tiny Qwen2-architecture causal LM on WikiText-2.

Produces a Hugging Face checkpoint directory (default models/wikitext-qwen2-4m/) with
config.json, generation_config.json, model.safetensors (bf16), tokenizer.json,
tokenizer_config.json, README.md and SHA256SUMS.

* Tokenizer: byte-level BPE trained with `tokenizers` on the training text, with exactly the
  Qwen2 normalizer / pre-tokenizer / decoder / post-processor (copied from the real Qwen2.5
  tokenizer.json when it is present under --data, else an identical built-in copy) and the
  special tokens <|endoftext|>, <|im_start|>, <|im_end|> appended after the BPE vocabulary,
  as in Qwen.
* Model: transformers.Qwen2ForCausalLM, Qwen2.5-like (GQA, q/k/v biases, SwiGLU, RMSNorm,
  tied embeddings), trained in fp32 on CPU, saved in bf16.
* Deterministic: fixed seeds, torch.use_deterministic_algorithms(True), a fixed thread count;
  rerunning on the same machine gives the same files.

Data (read-only): DATA/wikitext-2/valid.tokenized.txt (training text) and
DATA/wikitext-2/wiki.test.raw (held-out perplexity), DATA defaulting to ROOT/../shared/data.

Usage: .venv/bin/python scripts/train_tiny_model.py [--out models/wikitext-qwen2-4m] [options]
"""

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The real Qwen2/Qwen2.5 tokenizer.json pipeline (normalizer, pre-tokenizer, decoder,
# post-processor), used when DATA/qwen-tokenizer/tokenizer.json is absent.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTELEVEL = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
QWEN2_PIPELINE = {
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", **_BYTELEVEL},
        ],
    },
    "decoder": {"type": "ByteLevel", **_BYTELEVEL},
    "post_processor": {"type": "ByteLevel", **_BYTELEVEL},
}
QWEN2_BPE_OPTIONS = {
    "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
    "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HEADING = re.compile(r"^ = [^=].* = $")  # a WikiText article title line: " = Title = "


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="folder with wikitext-2/ (and qwen-tokenizer/)")
    p.add_argument("--out", default=str(ROOT / "models" / "wikitext-qwen2-4m"))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--vocab", type=int, default=4096, help="total, special tokens included")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine floor, times --lr")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.5)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-tokens", type=int, default=50000,
                   help="held-out tokens from the head of wiki.test.raw")
    p.add_argument("--eval-ctx", type=int, default=256)
    p.add_argument("--keep-unk", action="store_true",
                   help="keep the tokenized variant's <unk> placeholders (default: remove them; "
                        "wiki.test.raw has none)")
    p.add_argument("--holdout", type=int, default=0,
                   help="for tuning: keep the last N training articles out and report their "
                        "perplexity")
    p.add_argument("--device", default="cpu", help="for experiments only; the model is made on cpu")
    p.add_argument("--no-readme", action="store_true", help="skip README.md and SHA256SUMS")
    return p.parse_args()


def read_articles(path):
    """WikiText lines grouped into articles at top-level " = Title = " headings."""
    articles, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if HEADING.match(line.rstrip("\n")) and any(l.strip() for l in cur):
                articles.append("".join(cur))
                cur = []
            cur.append(line)
    if cur:
        articles.append("".join(cur))
    return articles


def qwen2_pipeline(data_dir):
    ref = Path(data_dir) / "qwen-tokenizer" / "tokenizer.json"
    if not ref.exists():
        return QWEN2_PIPELINE, "built-in copy"
    with open(ref, encoding="utf-8") as f:
        j = json.load(f)
    pipe = {k: j[k] for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor")}
    if pipe != QWEN2_PIPELINE:
        print("note: Qwen tokenizer.json pipeline differs from the built-in copy; using the file's")
    return pipe, str(ref)


def train_tokenizer(articles, vocab_total, data_dir):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_total - len(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(articles, trainer=trainer, length=len(articles))
    # Qwen puts its special tokens after the BPE vocabulary.
    tok.add_special_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False,
                                       normalized=False, special=True) for t in SPECIAL_TOKENS])
    # Make the serialized pipeline and BPE options exactly Qwen's.
    j = json.loads(tok.to_str())
    pipe, source = qwen2_pipeline(data_dir)
    j.update(pipe)
    vocab, merges = j["model"]["vocab"], j["model"]["merges"]
    j["model"] = {"type": "BPE", **QWEN2_BPE_OPTIONS, "vocab": vocab, "merges": merges}
    text = json.dumps(j, ensure_ascii=False, indent=2)
    tok = Tokenizer.from_str(text)
    if tok.get_vocab_size() != vocab_total:
        sys.exit(f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab_total}")
    return tok, text, source


def tokenizer_config(tok, model_max_length):
    added = {}
    for t in SPECIAL_TOKENS:
        added[str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def perplexity(model, ids, ctx):
    """exp(mean NLL) over non-overlapping windows of ctx tokens (each scored from scratch)."""
    import torch
    n = (len(ids) // ctx) * ctx
    windows = torch.tensor(ids[:n], dtype=torch.long).view(-1, ctx)
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, windows.shape[0], 8):
            x = windows[i:i + 8].to(model.device)
            logits = model(input_ids=x).logits.float()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = x[:, 1:]
            nll -= lp.gather(-1, tgt.unsqueeze(-1)).sum().item()
            count += tgt.numel()
    model.train()
    return math.exp(nll / count), count


def greedy(model, tok, prompt, n=40):
    import torch
    x = torch.tensor([tok.encode(prompt).ids], device=model.device)
    model.eval()
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=n, do_sample=False)
    model.train()
    return tok.decode(out[0].tolist(), skip_special_tokens=False)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    args = parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # tokenizers' trainer
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import random

    import torch  # after the thread settings above
    import transformers
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    for n in ("hidden", "intermediate"):
        if getattr(args, n) % 128:
            sys.exit(f"--{n} must be a multiple of 128 (quantization group sizes)")
    if args.heads * args.head_dim % 128 or args.vocab % 128:
        sys.exit("heads * head-dim and --vocab must be multiples of 128")

    t0 = time.time()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    data = Path(args.data)
    train_path = data / "wikitext-2" / "valid.tokenized.txt"
    test_path = data / "wikitext-2" / "wiki.test.raw"
    articles = read_articles(train_path)
    n_unk = sum(a.count(" <unk>") for a in articles)
    if not args.keep_unk:
        articles = [a.replace(" <unk>", "") for a in articles]
    dev_articles = []
    if args.holdout:
        articles, dev_articles = articles[:-args.holdout], articles[-args.holdout:]
    print(f"training text: {train_path} ({len(articles)} articles, "
          f"{sum(map(len, articles))} characters, {n_unk} <unk> "
          f"{'kept' if args.keep_unk else 'removed'})")

    tok, tok_json, pipe_source = train_tokenizer(articles, args.vocab, data)
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for enc in tok.encode_batch(articles):
        ids.extend(enc.ids)
        ids.append(eot)
    train = torch.tensor(ids, dtype=torch.long)
    with open(test_path, encoding="utf-8") as f:
        test_ids = tok.encode(f.read()).ids[:args.eval_tokens]
    dev_ids = []
    for enc in tok.encode_batch(dev_articles):
        dev_ids.extend(enc.ids + [eot])
    print(f"tokenizer: BPE {tok.get_vocab_size()} tokens (pipeline from {pipe_source}); "
          f"{len(train)} training tokens, {len(test_ids)} held-out tokens "
          f"[{time.time() - t0:.1f}s]")

    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.head_dim, hidden_act="silu",
        max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
        tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
        max_window_layers=args.layers, attention_dropout=0.0, initializer_range=0.02,
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, use_cache=True)
    model = Qwen2ForCausalLM(config)  # initialized from torch.manual_seed above
    dev = torch.device(args.device)
    model.to(dev)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen2ForCausalLM {n_params} parameters "
          f"(hidden {args.hidden}, intermediate {args.intermediate}, layers {args.layers}, "
          f"heads {args.heads}/{args.kv_heads}, head_dim {args.head_dim})")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        floor = args.lr * args.min_lr_frac
        return floor + (args.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(args.seed)
    t_train = time.time()
    run_loss = 0.0
    for step in range(args.steps):
        starts = torch.randint(0, len(train) - args.seq, (args.batch,), generator=gen)
        x = torch.stack([train[s:s + args.seq] for s in starts.tolist()]).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        run_loss += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            el = time.time() - t_train
            print(f"step {step + 1:5d}/{args.steps}  loss {run_loss / k:.4f}  "
                  f"lr {lr_at(step):.2e}  {el:.0f}s  "
                  f"{(step + 1) * args.batch * args.seq / el:.0f} tok/s", flush=True)
            run_loss = 0.0
    train_s = time.time() - t_train

    if dev_ids:
        print(f"holdout perplexity ({len(dev_ids)} tokens of {args.holdout} articles): "
              f"{perplexity(model, dev_ids, args.eval_ctx)[0]:.2f}")
    ppl32, n_eval = perplexity(model, test_ids, args.eval_ctx)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    model.cpu().to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                     do_sample=False).save_pretrained(out)
    # Also the keys older readers (transformers 4, converters) look for, as in Qwen2.5's config.
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    cfg.setdefault("torch_dtype", "bfloat16")
    cfg.setdefault("rope_theta", float(config.rope_parameters["rope_theta"]))
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
    (out / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(tok, 1024), indent=2) + "\n", encoding="utf-8")

    # Evaluate what was saved, as it loads: bf16 weights in fp32 arithmetic (as kldq eval on
    # CPU) for the perplexity; transformers' default (bf16) for the greedy sample.
    del model
    saved = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32)
    ppl16, _ = perplexity(saved, test_ids, args.eval_ctx)
    print(f"held-out perplexity (wiki.test.raw, first {n_eval + n_eval // (args.eval_ctx - 1)} "
          f"tokens, windows of {args.eval_ctx}): fp32 weights {ppl32:.2f}, saved bf16 weights "
          f"{ppl16:.2f}")
    sample = greedy(Qwen2ForCausalLM.from_pretrained(out), tok, "The game")
    print(f"greedy from 'The game' (saved checkpoint, bf16): {sample!r}")
    total_s = time.time() - t0

    if not args.no_readme:
        cmd = ".venv/bin/python scripts/train_tiny_model.py"
        given = [a for a in sys.argv[1:]]
        if given:
            cmd += " " + " ".join(shlex.quote(a) for a in given)
        write_readme(out, args, dict(
            cmd=cmd, n_params=n_params, n_train=len(train), n_articles=len(articles),
            n_unk=n_unk, n_eval=n_eval, ppl32=ppl32, ppl16=ppl16, sample=sample, train_s=train_s,
            total_s=total_s, torch=torch.__version__, transformers=transformers.__version__,
            tokenizers=__import__("tokenizers").__version__))
        names = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
        (out / "SHA256SUMS").write_text(
            "".join(f"{sha256(out / n)}  {n}\n" for n in names), encoding="utf-8")
    for p in out.iterdir():
        if p.is_file():
            p.chmod(0o644)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {total_s:.0f}s (training {train_s:.0f}s)")


def write_readme(out, a, r):
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "README.md")
    st = (out / "model.safetensors").stat().st_size
    unk = ("kept" if a.keep_unk else
           "removed (each ` <unk>` deleted: `wiki.test.raw` has none, and a model trained with them "
           "mostly generates `<unk>`)")
    threads = f"{a.threads} thread" + ("s" if a.threads != 1 else "")
    seen = a.steps * a.batch * a.seq
    text = f"""# wikitext-qwen2-4m: kldq's embedded demo model

A tiny, really trained causal language model with the Qwen2 / Qwen2.5 architecture, small enough
to commit with the project: `Qwen2ForCausalLM` with {r['n_params']:,} parameters, trained for a few
minutes on CPU on WikiText-2 text. With it, quantization and KL measurements run on real trained
weights (whose outliers and sensitivities differ from random ones) and on a byte-level BPE
`tokenizer.json` with exactly the Qwen2 pre-tokenizer, without downloading anything.

**This is a demo model, not a useful language model.** It continues text in a WikiText-like style
and knows nothing else. Greedy continuation of "The game" (transformers, default bf16):

```
{r['sample']}
```

## Files

| file | what |
|---|---|
| `config.json` | `qwen2` config, `dtype` (and `torch_dtype`) bfloat16 |
| `generation_config.json` | greedy; bos, eos and pad `<|endoftext|>` |
| `model.safetensors` | bf16 weights, tied embeddings (no `lm_head.weight`), {st:,} bytes |
| `tokenizer.json` | byte-level BPE, {a.vocab} tokens: {a.vocab - 3} learned, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (ids {a.vocab - 3} to {a.vocab - 1}); normalizer (NFC), pre-tokenizer (Qwen2 `Split` regex, then `ByteLevel` with use_regex false), decoder and post-processor copied from the real Qwen2.5 `tokenizer.json` |
| `tokenizer_config.json` | `Qwen2Tokenizer`, eos `<|endoftext|>`, no BOS, model_max_length 1024 |
| `SHA256SUMS` | `sha256sum -c SHA256SUMS` |

All files together: {size / 1e6:.2f} MB.

## Architecture

hidden {a.hidden}, intermediate {a.intermediate} (SwiGLU), {a.layers} layers, {a.heads} query heads and
{a.kv_heads} KV heads (GQA) of head_dim {a.head_dim}, q/k/v biases, RMSNorm eps 1e-6, RoPE theta 10000,
max_position_embeddings 1024, vocab {a.vocab}, tie_word_embeddings true. Every linear layer's
in_features ({a.hidden}, {a.heads * a.head_dim}, {a.intermediate}) is a multiple of 128, so all of
kldq's group sizes (32, 64, 128) apply.

## How it was made

```sh
{r['cmd']}
```

from the repository root, with `../shared/data` holding WikiText-2 (torch {r['torch']},
transformers {r['transformers']}, tokenizers {r['tokenizers']}; CPU, {threads}). The script is
deterministic (seed {a.seed}, `torch.use_deterministic_algorithms(True)`, a fixed thread count):
rerunning the command on the same machine reproduces these files; another CPU, thread count or
library version can change the last bits.

- Training text: `wikitext-2/valid.tokenized.txt` (the WikiText-2 validation split, tokenized
  variant; {r['n_articles']} articles, each followed by `<|endoftext|>`), {r['n_train']:,} tokens,
  its {r['n_unk']:,} `<unk>` placeholders {unk}. The tokenizer is trained on the same text.
- {a.steps} AdamW steps (betas 0.9/0.95, weight decay {a.weight_decay} on matrices, gradient clip
  {a.clip}) on batches of {a.batch} random windows of {a.seq} tokens ({seen:,} tokens seen, about
  {seen / r['n_train']:.1f} epochs); lr {a.lr:g} after {a.warmup} warmup steps, cosine decay to
  {a.lr * a.min_lr_frac:g}; fp32 training, saved as bf16. The defaults were picked by a small sweep
  (lr 5e-4 to 5e-3, batch 2 to 16, weight decay 0.1 to 1.0, 0.3M to 4.8M tokens seen) scored on 6
  training articles held out (`--holdout 6`, `<unk>` still in), not on the test text; with so
  little text, longer training overfits.
- This run: {r['train_s']:.0f} s of training, {r['total_s']:.0f} s in all. (With the default
  `--threads 2`, the script takes about 6 minutes on two idle cores of an x86 server.)

## Held-out perplexity

On the first {r['n_eval'] + r['n_eval'] // (a.eval_ctx - 1):,} tokens of WikiText-2 `wiki.test.raw`
(disjoint from the training text), in non-overlapping windows of {a.eval_ctx} tokens
({r['n_eval']:,} predicted tokens): **{r['ppl16']:.2f}** with the saved bf16 weights (computed in
fp32; {r['ppl32']:.2f} with the fp32 weights before saving). For scale, a uniform guess over the
vocabulary scores {a.vocab}. Perplexities are per token of this tokenizer: they compare with
other models only through the same tokenizer.

## License

The weights and the tokenizer are derived from WikiText-2 (Merity et al. 2016, text from
Wikipedia), which is licensed CC BY-SA 3.0, and are distributed under CC BY-SA 3.0. The code
that made them (`scripts/train_tiny_model.py`) is Apache-2.0, as is kldq.
"""
    (out / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
