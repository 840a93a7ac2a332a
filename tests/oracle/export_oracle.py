"""Oracle for `kldq export` (tests/export/test_export.cpp): the tools the exports are for.

  ct-logits DIR IDS OUT    transformers + compressed-tensors load the compressed-tensors checkpoint
                           DIR (fp32, CPU, decompressed at load) and write the logits of the token
                           ids in IDS (JSON [[...], ...]) to OUT (safetensors "logits" [B, T, V]).
  ct-compress SRC OUT      compressed-tensors' own compressor writes OUT from kldq's quantized
                           checkpoint SRC: every quantized layer's weight is dequantized here (from
                           kldq's documented layout, not kldq's code), given kldq's scales and zero
                           points, and compressed by ModelCompressor; kldq must read it back exactly.
  gguf-logits DIR GGUF IDS OUT
                           transformers reads the GGUF file (dequantizing it with the gguf package;
                           DIR holds it and the tokenizer) and writes logits as ct-logits does.
  ungqa SRC OUT            OUT: the model SRC without grouped-query attention, the same function:
                           every key/value head repeated for the query heads that share it (as
                           transformers' repeat_kv does), num_key_value_heads = num_attention_heads.
  gguf-check GGUF REF      the gguf package reads every tensor of GGUF and dequantizes it; REF
                           (safetensors, HF names, fp32) holds the weights kldq evaluates. Prints
                           one JSON line: per-tensor max |diff| (after undoing llama.cpp's q/k row
                           order), types, and the metadata keys.
"""
import json, sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def ct_logits(model_dir, ids_path, out_path):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    ids = torch.tensor(json.load(open(ids_path)))
    with torch.no_grad():
        logits = model(ids).logits.float()
    save_file({"logits": logits.contiguous()}, out_path)


def gguf_logits(model_dir, gguf_file, ids_path, out_path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file, dtype=torch.float32).eval()
    ids = torch.tensor(json.load(open(ids_path)))
    with torch.no_grad():
        logits = model(ids).logits.float()
    save_file({"logits": logits.contiguous()}, out_path)


def ungqa(src, out):
    import shutil
    shutil.copytree(src, out)
    cfg = json.load(open(f"{src}/config.json"))
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    sd = load_file(f"{src}/model.safetensors")
    for name in list(sd):
        if ".k_proj." in name or ".v_proj." in name:
            t = sd[name]
            sd[name] = t.reshape(kv, -1, *t.shape[1:]).repeat_interleave(heads // kv, 0).reshape(-1, *t.shape[1:]).contiguous()
    cfg["num_key_value_heads"] = heads
    json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
    import os
    if os.path.exists(f"{out}/SHA256SUMS"):
        os.remove(f"{out}/SHA256SUMS")
    save_file(sd, f"{out}/model.safetensors", metadata={"format": "pt"})


def unpack_rows(packed, bits, n):
    """uint8 [r, bytes] LSB-first bit streams -> int64 codes [r, n] (docs/FORMATS.md)."""
    b = packed.to(torch.int64)
    bitsv = torch.stack([(b >> k) & 1 for k in range(8)], -1).reshape(b.shape[0], -1)
    bitsv = bitsv[:, : n * bits].reshape(b.shape[0], n, bits)
    return (bitsv * (1 << torch.arange(bits))).sum(-1)


def ct_compress(src, out):
    import shutil
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationArgs
    from transformers import AutoModelForCausalLM
    shutil.copytree(src, out)
    sd = load_file(f"{src}/model.safetensors")
    from safetensors import safe_open
    with safe_open(f"{src}/model.safetensors", "pt") as f:
        formats = json.loads(f.metadata()["kldq.formats"])
    cfg = json.load(open(f"{src}/config.json"))
    model = AutoModelForCausalLM.from_config(
        __import__("transformers").AutoConfig.from_pretrained(src), dtype=torch.float32)
    groups, ignore = {}, ["lm_head"]
    dense = {}
    for name, fmt in formats.items():
        if fmt == "bf16":
            ignore.append(name)
            continue
        parts = fmt.split("_")
        bits, g = int(parts[0][3:]), int(parts[1][1:])
        asym = "asym" in parts
        key = (bits, g, asym)
        groups.setdefault(key, []).append(name)
        codes_u8 = sd.pop(name + ".weight_packed")
        scale = sd.pop(name + ".weight_scale").float()  # [out, groups]
        out_f = scale.shape[0]
        in_f = codes_u8.shape[1] * 8 // bits
        codes = unpack_rows(codes_u8, bits, in_f)
        zero = sd.pop(name + ".weight_zero").to(torch.int64) if asym else torch.full_like(scale, 1 << (bits - 1), dtype=torch.int64)
        w = ((codes.reshape(out_f, -1, g) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(out_f, in_f)
        dense[name] = (w, scale, zero - (1 << (bits - 1)))
    config_groups = {}
    for i, ((bits, g, asym), names) in enumerate(sorted(groups.items())):
        config_groups[f"group_{i}"] = QuantizationScheme(
            targets=[f"re:^{n.replace('.', chr(92) + '.')}$" for n in names],
            weights=QuantizationArgs(num_bits=bits, type="int", symmetric=not asym, strategy="group", group_size=g))
    qcfg = QuantizationConfig(config_groups=config_groups, ignore=ignore, format="pack-quantized",
                              quantization_status="frozen")
    from compressed_tensors.quantization import apply_quantization_config
    state = {k: v.float() for k, v in sd.items()}
    for name, (w, s, z) in dense.items():
        state[name + ".weight"] = w
    model.load_state_dict(state, strict=False)
    apply_quantization_config(model, qcfg)
    with torch.no_grad():
        for name, (w, s, z) in dense.items():
            m = model.get_submodule(name)
            m.weight_scale.data = s.to(m.weight_scale.dtype)
            if hasattr(m, "weight_zero_point"):
                m.weight_zero_point.data = z.to(m.weight_zero_point.dtype)
    compressor = ModelCompressor(quantization_config=qcfg)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)


def gguf_check(path, ref_path):
    import gguf
    r = gguf.GGUFReader(path)
    ref = load_file(ref_path)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            v = f.contents()
        except Exception:
            v = None
        meta[k] = v if not isinstance(v, list) or len(v) < 8 else f"list[{len(v)}]"
    arch = meta["general.architecture"]
    n_head = meta[f"{arch}.attention.head_count"]
    n_kv = meta[f"{arch}.attention.head_count_kv"]
    result = {"tensors": {}, "meta": meta}
    for t in r.tensors:
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        shape = [int(x) for x in reversed(t.shape.tolist())]
        w = w.reshape(shape)
        if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
            h = n_head if ".attn_q." in t.name else n_kv
            out = w.shape[0]  # undo llama.cpp's permute: rows (2i, 2i+1) back to (i, i + d/2)
            w = w.reshape(h, out // h // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
        want = ref.get(t.name)
        diff = float((w - want).abs().max()) if want is not None and want.shape == w.shape else None
        result["tensors"][t.name] = {"type": t.tensor_type.name, "max_diff": diff}
    print(json.dumps(result))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ct-logits":
        ct_logits(*sys.argv[2:5])
    elif cmd == "ct-compress":
        ct_compress(*sys.argv[2:4])
    elif cmd == "gguf-logits":
        gguf_logits(*sys.argv[2:6])
    elif cmd == "ungqa":
        ungqa(*sys.argv[2:4])
    elif cmd == "gguf-check":
        gguf_check(*sys.argv[2:4])
    else:
        sys.exit(f"unknown command {cmd}")
