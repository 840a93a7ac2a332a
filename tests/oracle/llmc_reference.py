"""Independent reference: llm-compressor's GPTQ / AWQ / RTN (W4A16) on wikitext-qwen2-4m.

What it does
  Quantizes the tiny real Qwen2 model models/wikitext-qwen2-4m (4 blocks, hidden 256) with
  llm-compressor's `oneshot`, on the CPU in float32, three times from a fresh model each time:
    gptq  GPTQModifier(targets=Linear, ignore=[lm_head], scheme=W4A16), library defaults
          (block_size 128, dampening_frac 0.01, actorder "static" = "weight")
    awq   AWQModifier() (default Qwen2 mappings, duo_scaling True, n_grid 20) followed by
          QuantizationModifier(targets=Linear, ignore=[lm_head], scheme=W4A16)
    rtn   QuantizationModifier(targets=Linear, ignore=[lm_head], scheme=W4A16) alone
  W4A16 = int4 weights, symmetric, group size 128 along the input dimension, min-max scales
  (scale = absmax/7.5, q in [-8, 7]), activations unquantized.
  Calibration: the whole of data/demo/wiki.test.tail.txt tokenized with the model's
  tokenizer.json (`tokenizers`, add_special_tokens=False), windows k=0..63 = tokens[256k:256(k+1)]
  (no BOS, no shuffling), passed as a dataset of input_ids + attention_mask(ones).
  Evaluation: data/demo/wiki.test.head.txt, windows k=0..23 = tokens[256k:256(k+1)].
  After each run the fake-quantized weights (and, for AWQ, the rescaled norms / up_proj rows)
  are copied into a plain fp32 Qwen2ForCausalLM, which is compared with the unquantized model:
    e_L   per linear layer L (28 = 4 blocks x q,k,v,o,gate,up,down): sum (y_q - y_ref)^2 /
          sum y_ref^2 over all eval tokens and output features, fp64 accumulation; each model's
          layer sees its own inputs (upstream error included)
    ppl   exp(mean NLL), positions 0..254 of each window predicting tokens 1..255
    kl    mean over those positions of KL(P_ref || P_quant)
  Results go to tests/data/llmc_reference.json.

Caveats handled here
  * llm-compressor's LengthAwareSampler orders the 64 equal-length windows by an unstable argsort,
    so calibration sees a fixed permutation of them (recorded in the JSON); only summation order
    is affected.
  * AWQ on CPU: IntermediatesCache.pin_memory needs CUDA; it is made a no-op (see cpu_workarounds).
  * AWQ folds its scales into the model: input/post_attention RMSNorm weights / s (q,k,v and gate,up
    columns * s), and up_proj rows / s (down_proj columns * s). The first two are invisible at the
    linear outputs; the last leaves up_proj's output divided by s, so for e_L the dense AWQ model has
    s moved back out of up_proj into down_proj (same products). The folded-basis e of up_proj is kept
    too. v_proj -> o_proj is skipped by llm-compressor (GQA shapes).

How to run (needs its own venv; llm-compressor is NOT a dependency of the project):
  python3 -m venv /work/llmc-venv && /work/llmc-venv/bin/pip install llmcompressor
  /work/llmc-venv/bin/python tests/oracle/llmc_reference.py [--out tests/data/llmc_reference.json]
                                                            [--scratch DIR]
  (takes about 7 minutes on 2 CPU cores, mostly AWQ's grid search; scratch files go to --scratch)

Versions used for the committed JSON: llmcompressor 0.14.0.1, compressed-tensors 0.19.0,
transformers 5.17.0, torch 2.14.0 (default PyPI wheel, run on CPU), tokenizers 0.23.3,
datasets 5.2.0, accelerate 1.15.0, Python 3.11.7.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from importlib.metadata import version

import torch

torch.set_num_threads(max(1, os.cpu_count() or 1))

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(REPO, "models", "wikitext-qwen2-4m")
CALIB_TXT = os.path.join(REPO, "data", "demo", "wiki.test.tail.txt")
EVAL_TXT = os.path.join(REPO, "data", "demo", "wiki.test.head.txt")
T = 256
N_CALIB = 64
N_EVAL = 24
PROJS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def windows(path, n):
    """Token windows k=0..n-1 = tokens[k*T:(k+1)*T] of the whole file (no BOS)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    with open(path, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=False).ids
    assert len(ids) >= n * T, f"{path}: {len(ids)} tokens < {n * T}"
    return torch.tensor([ids[k * T:(k + 1) * T] for k in range(n)], dtype=torch.long), len(ids)


def load_fp32():
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def linear_names(model):
    return [f"model.layers.{i}.{p}" for i in range(model.config.num_hidden_layers) for p in PROJS]


def make_recipe(method):
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier
    quant = dict(targets=["Linear"], ignore=["lm_head"], scheme="W4A16")
    if method == "gptq":
        return [GPTQModifier(**quant)]  # defaults: block_size 128, dampening 0.01, actorder static
    if method == "awq":
        return [AWQModifier(), QuantizationModifier(**quant)]  # default mappings, duo_scaling True
    if method == "rtn":
        return [QuantizationModifier(**quant)]
    raise ValueError(method)


def cpu_workarounds():
    """llm-compressor 0.14.0.1's AWQ pins its cached activations (IntermediatesCache.pin_memory),
    which raises "Found no NVIDIA driver" without CUDA. Pinning only speeds up host-to-device copies,
    so on a CPU-only machine it is made a no-op; the numerics are unchanged."""
    from llmcompressor.pipelines.cache import IntermediatesCache
    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def colscale(w_new, w_old):
    """Per-input-column factor s with w_new[:, j] ~= w_old[:, j] * s[j] (least squares, fp64)."""
    a, b = w_new.double(), w_old.double()
    return (a * b).sum(0) / (b * b).sum(0)


@torch.no_grad()
def awq_scales(orig, model, n_layers):
    """Recover the AWQ scales s applied by llm-compressor from the (pre-quantization) weights it left
    in the model: balance layers hold W*s (columns), smooth layers hold norm/s or up_proj rows / s."""
    op, mp = dict(orig.named_parameters()), dict(model.named_parameters())
    out, report = {}, {}
    for i in range(n_layers):
        pre = f"model.layers.{i}."
        for smooth, bal in [("input_layernorm", "self_attn.q_proj"), ("post_attention_layernorm", "mlp.gate_proj"),
                            ("mlp.up_proj", "mlp.down_proj")]:
            s = colscale(mp[pre + bal + ".weight"], op[pre + bal + ".weight"])
            # consistency: the smooth layer was divided by the same s
            if smooth.endswith("norm"):
                back = mp[pre + smooth + ".weight"].double() * s
                resid = float((back - op[pre + smooth + ".weight"].double()).abs().max())
            else:  # up_proj: rows / s_down, and its columns already * s of post_attention_layernorm
                back = mp[pre + smooth + ".weight"].double() * s[:, None]
                want = op[pre + smooth + ".weight"].double() * out[pre + "post_attention_layernorm"][None, :]
                resid = float((back - want).abs().max())
            out[pre + smooth] = s
            report[pre + smooth + " -> " + bal.split(".")[-1] + ("" if bal.endswith("down_proj") else ",...")] = {
                "s_min": float(s.min()), "s_max": float(s.max()), "identity": bool(torch.allclose(s, torch.ones_like(s))),
                "smooth_layer_consistency_max_abs": resid}
        # v_proj -> o_proj must have been skipped (GQA: v_proj out 128 != o_proj in 256)
        s = colscale(mp[pre + "self_attn.o_proj.weight"], op[pre + "self_attn.o_proj.weight"])
        report[pre + "self_attn.v_proj -> o_proj"] = {"applied": not bool(torch.allclose(s, torch.ones_like(s)))}
    return out, report


def run_oneshot(method, calib, scratch):
    """Run llm-compressor's oneshot on a fresh fp32 model; return (dense fp32 model(s), info)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from compressed_tensors.quantization import forward_quantize

    model = load_fp32()
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": torch.ones_like(calib).tolist()})

    # Record what the model actually sees in calibration (to check content / order / no BOS).
    seen = []
    h = model.model.embed_tokens.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    recipe = make_recipe(method)
    t0 = time.time()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=T, num_calibration_samples=N_CALIB,
            shuffle_calibration_samples=False, batch_size=1, output_dir=None)
    dt = time.time() - t0
    h.remove()
    seen = [x.reshape(-1) for x in seen if x.device.type != "meta"]  # drop the sequential pipeline's trace
    # The sequential pipeline runs the first subgraph (embedding) once per pass (calibrate, then
    # propagate). llm-compressor's LengthAwareSampler orders samples by argsort(length, descending),
    # which for equal lengths is an arbitrary (but fixed) permutation even with shuffling off; so check
    # that each pass holds each of the 64 windows exactly once and record the order.
    order = []
    for x in seen:
        hits = [k for k in range(N_CALIB) if x.numel() == T and torch.equal(x, calib[k])]
        order.append(hits[0] if len(hits) == 1 else -1)
    passes = [order[i:i + N_CALIB] for i in range(0, len(order), N_CALIB)]
    calib_ok = bool(passes) and all(sorted(p) == list(range(N_CALIB)) for p in passes)
    calib_info = ({"windows_seen_per_pass_all_exact": calib_ok, "passes": len(passes), "order": passes[0]}
                  if passes else "no calibration forward (DataFreePipeline: weight-only min-max needs no data)")

    # Dense fake-quantized weights: Q(W) computed from the stored weight and qparams, copied into a
    # plain fp32 model together with every other (possibly AWQ-rescaled) parameter.
    state, qinfo = {}, {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            scheme = getattr(mod, "quantization_scheme", None)
            if scheme is not None and scheme.weights is not None and isinstance(mod, torch.nn.Linear):
                wq = forward_quantize(mod, mod.weight, "weight", scheme.weights)
                state[name + ".weight"] = wq.detach().float().clone()
                qinfo[name] = scheme.weights.model_dump(mode="json")
        for name, p in model.named_parameters():
            if name.endswith(".weight") and name[:-7] in qinfo:
                continue
            state.setdefault(name, p.detach().float().clone())

    def make_dense(st):
        d = load_fp32()
        names = dict(d.named_parameters())
        missing, unexpected = d.load_state_dict({k: v for k, v in st.items() if k in names}, strict=False)
        assert not unexpected, unexpected
        assert not [k for k in missing if k != "lm_head.weight"], missing  # lm_head is tied to embed_tokens
        return d

    dense = make_dense(state)
    torch.save(state, os.path.join(scratch, f"llmc_{method}_dense.pt"))

    # Cross-check: the dense model reproduces llm-compressor's own quantized forward.
    with torch.no_grad():
        xcheck = float((model(calib[:1]).logits - dense(calib[:1]).logits).abs().max())
    info = dict(seconds=round(dt, 1), calibration=calib_info, xcheck_max_abs_logit_diff=xcheck,
                quantized_layers=len(qinfo), weight_args=qinfo[sorted(qinfo)[0]])

    folded = None
    if method == "awq":
        # AWQ's up_proj -> down_proj smoothing leaves up_proj's output divided by s (down_proj's
        # columns hold W*s). The norm -> q/k/v and norm -> gate/up smoothings are invisible at the
        # linear outputs (norm/s feeds W*s). To compare up_proj's output with the reference in the
        # original basis, unfold s: up_proj rows (of Q(W_up/s)) * s, down_proj columns (of Q(W_down*s)) / s.
        # This changes no product, only where s sits; e_L of up_proj in the folded basis is also kept.
        scales, report = awq_scales(load_fp32(), model, model.config.num_hidden_layers)
        info["awq_scales"] = report
        unfolded = dict(state)
        for i in range(model.config.num_hidden_layers):
            pre = f"model.layers.{i}.mlp."
            s = scales[pre + "up_proj"].float()
            unfolded[pre + "up_proj.weight"] = state[pre + "up_proj.weight"] * s[:, None]
            unfolded[pre + "down_proj.weight"] = state[pre + "down_proj.weight"] / s[None, :]
        folded, dense = dense, make_dense(unfolded)
        with torch.no_grad():
            info["unfold_max_abs_logit_diff"] = float((folded(calib[:1]).logits - dense(calib[:1]).logits).abs().max())
    return dense, folded, info


def capture(model, names, ev):
    """Per-window outputs of the named linear layers and logits (fp32)."""
    outs = {n: [] for n in names}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, a, o, n=n: outs[n].append(o.detach().clone()))
             for n in names]
    logits = []
    with torch.no_grad():
        for k in range(ev.shape[0]):
            logits.append(model(ev[k:k + 1]).logits[0].detach().clone())
    for h in hooks:
        h.remove()
    return outs, logits


def metrics(ref_outs, ref_logits, outs, logits, ev):
    e = {}
    for n in ref_outs:
        num = sum(float(((q.double() - r.double()) ** 2).sum()) for q, r in zip(outs[n], ref_outs[n]))
        den = sum(float((r.double() ** 2).sum()) for r in ref_outs[n])
        e[n] = num / den
    nll, kl, cnt = 0.0, 0.0, 0
    for k, (lq, lr) in enumerate(zip(logits, ref_logits)):
        lq = torch.log_softmax(lq[:-1].double(), -1)
        lr = torch.log_softmax(lr[:-1].double(), -1)
        tgt = ev[k, 1:]
        nll += float(-lq.gather(1, tgt[:, None]).sum())
        kl += float((lr.exp() * (lr - lq)).sum())
        cnt += tgt.numel()
    return e, math.exp(nll / cnt), kl / cnt


def ref_ppl(ref_logits, ev):
    nll, cnt = 0.0, 0
    for k, lr in enumerate(ref_logits):
        lr = torch.log_softmax(lr[:-1].double(), -1)
        nll += float(-lr.gather(1, ev[k, 1:, None]).sum())
        cnt += T - 1
    return math.exp(nll / cnt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "llmc_reference.json"))
    ap.add_argument("--scratch", default=None, help="working directory (default: a new temporary one)")
    ap.add_argument("--methods", default="gptq,awq,rtn")
    args = ap.parse_args()
    args.out = os.path.abspath(args.out)  # before the chdir below
    if args.scratch is None:
        args.scratch = tempfile.mkdtemp(prefix="llmc-reference-")
    os.makedirs(args.scratch, exist_ok=True)
    os.chdir(args.scratch)  # llm-compressor may write logs / caches to the working directory

    calib, n_calib_tok = windows(CALIB_TXT, N_CALIB)
    ev, n_eval_tok = windows(EVAL_TXT, N_EVAL)
    cpu_workarounds()

    ref = load_fp32()
    names = linear_names(ref)
    ref_outs, ref_logits = capture(ref, names, ev)

    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.transform import AWQModifier
    g, a = GPTQModifier(targets=["Linear"], scheme="W4A16"), AWQModifier()
    result = {
        "description": "llm-compressor W4A16 (int4 sym g128) GPTQ/AWQ/RTN on wikitext-qwen2-4m, CPU fp32; "
                       "per-layer output reconstruction error e_L vs the fp32 model on eval windows. "
                       "Produced by tests/oracle/llmc_reference.py.",
        "versions": {p: version(p) for p in ["llmcompressor", "compressed-tensors", "transformers", "torch",
                                             "tokenizers", "datasets", "accelerate"]}
                    | {"python": sys.version.split()[0]},
        "model": "models/wikitext-qwen2-4m (bf16 safetensors, loaded as float32, attn eager)",
        "settings": {
            "scheme": "W4A16: int4, symmetric, strategy group, group_size 128, min-max (memoryless_minmax) "
                      "observer, scale = absmax/7.5, q in [-8,7], zero_point 0; targets Linear, ignore lm_head",
            "gptq": {"block_size": g.block_size, "dampening_frac": g.dampening_frac,
                     "actorder": "static (library default; alias of 'weight': columns processed in order of "
                                 "decreasing Hessian diagonal, group scales fixed from the original weights "
                                 "before error propagation)",
                     "batched_quantization": str(g.batched_quantization),
                     "hessian": "2/n X X^T accumulated per sample over calibration inputs (sequential pipeline: "
                                "inputs come from already-quantized earlier blocks)"},
            "awq": {"duo_scaling": a.duo_scaling, "n_grid": a.n_grid,
                    "mappings": "default (Qwen2ForCausalLM -> default_mappings): input_layernorm -> q,k,v; "
                                "v_proj -> o_proj (skipped: GQA shape mismatch 128 vs 256); "
                                "post_attention_layernorm -> gate,up; up_proj -> down_proj",
                    "folding": "scales divide the RMSNorm weights / up_proj rows and multiply the balance layer "
                               "columns (W*s), then QuantizationModifier applies RTN W4A16 min-max to W*s",
                    "then": "QuantizationModifier(W4A16)"},
            "rtn": "QuantizationModifier(W4A16) alone (min-max group scales, round to nearest)",
            "oneshot": {"max_seq_length": T, "num_calibration_samples": N_CALIB,
                        "shuffle_calibration_samples": False, "batch_size": 1, "pipeline": "independent (default)"},
        },
        "windows": {
            "tokenizer": "tokenizers.Tokenizer.from_file(models/wikitext-qwen2-4m/tokenizer.json)"
                         ".encode(text, add_special_tokens=False).ids",
            "calibration": {"file": "data/demo/wiki.test.tail.txt", "sha256": sha256(CALIB_TXT),
                            "total_tokens": n_calib_tok, "N": N_CALIB, "T": T,
                            "window_k": "tokens[k*256:(k+1)*256], k=0..63, no BOS"},
            "evaluation": {"file": "data/demo/wiki.test.head.txt", "sha256": sha256(EVAL_TXT),
                           "total_tokens": n_eval_tok, "N": N_EVAL, "T": T,
                           "window_k": "tokens[k*256:(k+1)*256], k=0..23, no BOS"},
        },
        "metric": {
            "e_L": "sum over eval tokens and output features of (y_quant - y_ref)^2 / sum y_ref^2, fp64; "
                   "each model's layer receives its own inputs",
            "ppl": "exp(mean NLL), positions 0..254 predict tokens 1..255 of each window",
            "kl_mean": "mean per-token KL(P_ref || P_quant) over the same positions (nats)",
        },
        "reference": {"ppl": ref_ppl(ref_logits, ev)},
        "methods": {},
    }
    print("reference ppl", result["reference"]["ppl"], flush=True)

    for method in args.methods.split(","):
        dense, folded, info = run_oneshot(method, calib, args.scratch)
        outs, logits = capture(dense, names, ev)
        e, ppl, kl = metrics(ref_outs, ref_logits, outs, logits, ev)
        result["methods"][method] = {"e": e, "mean_e": sum(e.values()) / len(e), "ppl": ppl, "kl_mean": kl}
        if folded is not None:  # AWQ: e_L with up_proj's output left in llm-compressor's scaled basis
            fo, fl = capture(folded, names, ev)
            fe, fppl, fkl = metrics(ref_outs, ref_logits, fo, fl, ev)
            result["methods"][method]["folded_basis"] = {
                "note": "as stored by llm-compressor: up_proj output = y/s; only up_proj's e differs",
                "e_up_proj": {n: fe[n] for n in names if n.endswith("up_proj")},
                "mean_e": sum(fe.values()) / len(fe), "ppl": fppl, "kl_mean": fkl}
        result["methods"][method]["run"] = info
        print(method, "mean_e", result["methods"][method]["mean_e"], "ppl", ppl, "kl", kl, info, flush=True)
        del dense

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
