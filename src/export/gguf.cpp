// Export to GGUF for llama.cpp: architecture metadata and tokenizer as llama.cpp's converter
// (convert_hf_to_gguf.py) writes them, HF tensors under GGUF names, each with its own type
// (docs/FORMATS.md, "Export"):
//
//   kldq format            GGUF type   exact?
//   bf16 / fp16 / dense    BF16 / F16 / F32 (as stored)            yes
//   int4_g32 (symmetric)   Q4_0        yes: d = scale, q = stored code (x = (q - 8)·d)
//   int8 (per row)         Q8_0        yes: every block's d = the row's scale, q = code
//   int4_g32_asym          Q4_1        codes and scales kept, the min m = -zero·scale rounded to
//   fp16 nf4, fp4               IQ4_NL      re-quantized fp8 formats            Q8_0 re-quantized
//   other int formats      Q4_0 (Q4_1 when asymmetric)   re-quantized
//   rows not whole blocks  F32         kldq's dequantized weights, exactly
//
// Re-quantization starts from the original weights when the export quantized MODEL itself
// (ExportOptions::original), else from kldq's dequantized weights; each such layer is reported.
// Llama-family q/k rows are permuted as llama.cpp's converter does (its rotary embedding pairs
// dimensions (2i, 2i+1) of a head; HF's pairs (i, i + d/2)); qwen2 needs no permutation.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstring>
#include <functional>
#include <optional>

#include "gguf_vocab.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/export/export.hpp"
#include "kldq/io/gguf.hpp"

namespace kldq::exporting {
namespace {

namespace fs = std::filesystem;
using formats::Format;
using io::GgmlType;

// The 16 values of IQ4_NL (ggml-common.h kvalues_iq4nl), a non-uniform 4-bit grid.
const float kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

std::string gguf_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static const std::pair<const char*, const char*> kParts[] = {
      {"input_layernorm", "attn_norm"}, {"post_attention_layernorm", "ffn_norm"},
      {"self_attn.q_proj", "attn_q"},   {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},   {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  const size_t dot = hf.find('.', 13);  // "model.layers.N."
  const std::string block = hf.substr(13, dot - 13), rest = hf.substr(dot + 1);
  for (const auto& [from, to] : kParts)
    if (rest.starts_with(std::string(from) + "."))
      return fmt::format("blk.{}.{}{}", block, to, rest.substr(std::strlen(from)));
  throw InternalError("gguf_name: unmapped tensor " + hf);
}

at::Tensor bytes_of(const at::Tensor& t) {  // any contiguous tensor -> its uint8 bytes [rows, n]
  const at::Tensor c = t.contiguous();
  return c.view(at::kByte).reshape({c.dim() > 1 ? c.size(0) : 1, -1});
}

// 4-bit codes [out, in] (< 16) -> nibbles [out, in/32, 16]: byte j = q(j) | q(j + 16) << 4.
at::Tensor nibbles(const at::Tensor& codes) {
  const at::Tensor c = codes.reshape({codes.size(0), -1, 32}).to(at::kByte);
  return at::bitwise_or(c.narrow(2, 0, 16), at::bitwise_left_shift(c.narrow(2, 16, 16), 4));
}

at::Tensor fp16_bytes(const at::Tensor& x) {  // [out, nb] -> [out, nb, 2]
  return x.to(at::kHalf).contiguous().view(at::kByte).reshape({x.size(0), x.size(1), 2});
}

// Blocks of 32: [out, nb, header + payload] -> rows of bytes [out, nb·(block bytes)].
at::Tensor rows(std::vector<at::Tensor> parts) {
  const at::Tensor b = at::cat(parts, 2);
  return b.reshape({b.size(0), -1});
}

// Q8_0 / IQ4_NL by re-quantizing fp32 weights w [out, in] (in a multiple of 32).
at::Tensor q8_0_of(const at::Tensor& w) {
  const at::Tensor g = w.reshape({w.size(0), -1, 32});
  const at::Tensor d = (g.abs().amax(2) / 127).to(at::kHalf).to(at::kFloat);  // [out, nb]
  const at::Tensor inv = at::where(d > 0, 1 / d, at::zeros_like(d)).unsqueeze(2);
  const at::Tensor q = at::round(g * inv).clamp(-127, 127).to(at::kChar);
  return rows({fp16_bytes(d), q.view(at::kByte)});
}

at::Tensor iq4_nl_of(const at::Tensor& w) {
  const at::Tensor g = w.reshape({w.size(0), -1, 32});
  const at::Tensor table = at::tensor(at::ArrayRef<float>(kIq4nl, 16));
  // The block's value of largest magnitude maps to -127 (the grid's widest end), as llama.cpp's
  // first guess; then each weight takes the nearest grid value and d is refitted by least squares.
  const at::Tensor idx = g.abs().argmax(2, true);
  const at::Tensor extreme = g.gather(2, idx);
  at::Tensor d = extreme / -127;  // [out, nb, 1]
  const at::Tensor safe = at::where(d != 0, d, at::ones_like(d));
  const at::Tensor q = (g / safe).unsqueeze(3).sub(table).abs().argmin(3);  // [out, nb, 32]
  const at::Tensor v = table.index({q});
  const at::Tensor vv = (v * v).sum(2, true);
  d = at::where(vv > 0, (g * v).sum(2, true) / vv, at::zeros_like(d));
  return rows({fp16_bytes(d.squeeze(2)), nibbles(q)});
}

at::Tensor q4_0_of(const at::Tensor& w) {  // llama.cpp's reference: d = (signed extreme) / -8
  const at::Tensor g = w.reshape({w.size(0), -1, 32});
  const at::Tensor d = (g.gather(2, g.abs().argmax(2, true)) / -8).to(at::kHalf).to(at::kFloat);
  const at::Tensor inv = at::where(d != 0, 1 / d, at::zeros_like(d));
  const at::Tensor q = at::round(g * inv + 8).clamp(0, 15);
  return rows({fp16_bytes(d.squeeze(2)), nibbles(q)});
}

at::Tensor q4_1_of(const at::Tensor& w) {  // llama.cpp's reference: d = (max - min) / 15, m = min
  const at::Tensor g = w.reshape({w.size(0), -1, 32});
  const at::Tensor lo = g.amin(2, true), hi = g.amax(2, true);
  const at::Tensor d = ((hi - lo) / 15).to(at::kHalf).to(at::kFloat);
  const at::Tensor m = lo.to(at::kHalf).to(at::kFloat);
  const at::Tensor inv = at::where(d != 0, 1 / d, at::zeros_like(d));
  const at::Tensor q = at::round((g - m) * inv).clamp(0, 15);
  return rows({fp16_bytes(d.squeeze(2)), fp16_bytes(m.squeeze(2)), nibbles(q)});
}

struct Encoded {
  GgmlType type;
  std::string requantized;  // "" when the GGUF weights are kldq's exactly
  bool codes_kept = false;  // requantized only in rounding kldq's scales/zeros into GGUF's fields
};

// The GGUF type of a linear layer of format `f` (nullopt: dense) with `in` columns.
Encoded choose(const std::optional<formats::FormatSpec>& f, at::ScalarType stored, int64_t in) {
  if (!f || f->dense())
    return {stored == at::kBFloat16 ? GgmlType::BF16
            : stored == at::kHalf   ? GgmlType::F16
                                    : GgmlType::F32,
            ""};
  if (in % 32 != 0) return {GgmlType::F32, ""};
  const std::string from = f->name();
  switch (f->format) {
    case Format::INT4:
      if (f->group == 32 && !f->float_zero)
        return f->asymmetric ? Encoded{GgmlType::Q4_1,
                                       from +
                                           " -> Q4_1: codes and scales kept, the minimum "
                                           "-zero*scale rounded to fp16",
                                       true}
                             : Encoded{GgmlType::Q4_0, ""};
      return f->asymmetric ? Encoded{GgmlType::Q4_1, from + " -> Q4_1"}
                           : Encoded{GgmlType::Q4_0, from + " -> Q4_0"};
    case Format::INT8:
      return {GgmlType::Q8_0, ""};
    case Format::NF4:
    case Format::FP4:
      return {GgmlType::IQ4_NL, from + " -> IQ4_NL"};
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
    case Format::FP8_E4M3_NOSCALE:
      return {GgmlType::Q8_0, from + " -> Q8_0"};
    case Format::INT3:  // the other int formats, re-quantized; asymmetric ones keep a minimum
    case Format::INT2:
    case Format::BF16:  // dense layers are written as stored, never here
    case Format::FP16:
      return f->asymmetric ? Encoded{GgmlType::Q4_1, from + " -> Q4_1"}
                           : Encoded{GgmlType::Q4_0, from + " -> Q4_0"};
  }
  throw InternalError("gguf: not a format");
}

// Rows of the GGUF tensor of a quantized layer, exact mappings from the stored codes.
at::Tensor exact_rows(const formats::PackedWeight& p, GgmlType type) {
  if (type == GgmlType::F32) return bytes_of(formats::dequantize(p));
  const int64_t nb = p.in / 32;
  if (type == GgmlType::Q8_0) {
    const at::Tensor d = p.scales.reshape({p.out, 1}).expand({p.out, nb});
    return rows({fp16_bytes(d), p.codes.reshape({p.out, nb, 32}).view(at::kByte)});
  }
  const at::Tensor codes = formats::unpack_bits(p.codes, 4, p.in);  // [out, in]
  if (type == GgmlType::Q4_0) return rows({fp16_bytes(p.scales), nibbles(codes)});
  // Q4_1: x = q·d + m with m = -zero·d, the one rounding of this mapping.
  const at::Tensor s = p.scales.to(at::kFloat);
  return rows({fp16_bytes(s), fp16_bytes(-p.zeros.to(at::kFloat) * s), nibbles(codes)});
}

// llama.cpp's converter's row order for q/k of Llama-family models: within each head, rows
// (i, i + d/2) become neighbours (2i, 2i + 1).
at::Tensor permute_rows(const at::Tensor& r, int64_t heads) {
  const int64_t out = r.size(0);
  return r.reshape({heads, 2, out / heads / 2, -1}).transpose(1, 2).reshape({out, -1});
}

// Architecture keys as llama.cpp's converter writes them for qwen2 and llama.
void add_model_metadata(io::GgufWriter& g, const Source& src, const std::string& arch,
                        const std::string& name) {
  const model::ModelConfig& c = src.config();
  g.add_string("general.architecture", arch);
  g.add_string("general.name", name.empty()
                                   ? fs::absolute(src.dir()).lexically_normal().filename().string()
                                   : name);
  g.add_u32("general.alignment", 32);
  g.add_u32("general.quantization_version", 2);
  auto u32 = [&](const std::string& key, int64_t v) {
    g.add_u32(arch + "." + key, static_cast<uint32_t>(v));
  };
  u32("block_count", c.num_layers);
  u32("context_length", c.max_position_embeddings);
  u32("embedding_length", c.hidden_size);
  u32("feed_forward_length", c.intermediate_size);
  u32("attention.head_count", c.num_heads);
  u32("attention.head_count_kv", c.num_kv_heads);
  if (c.head_dim != c.hidden_size / c.num_heads) {
    u32("attention.key_length", c.head_dim);
    u32("attention.value_length", c.head_dim);
  }
  g.add_f32(arch + ".rope.freq_base", static_cast<float>(c.rope_theta));
  g.add_f32(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  if (arch == "llama") {
    u32("vocab_size", c.vocab_size);
    u32("rope.dimension_count", c.head_dim);
  }
}

using Finish = std::function<at::Tensor(const at::Tensor&)>;

// Embeddings, norms, biases and the head: norms and biases in F32, as llama.cpp's converter.
void add_plain(io::GgufWriter& g, const Source& src, const model::TensorSlot& s,
               const Finish& finish) {
  const at::ScalarType stored = src.checkpoint().info(s.name).scalar_type;
  const bool f32 = s.role == model::TensorRole::NORM || s.role == model::TensorRole::LINEAR_BIAS ||
                   stored == at::kFloat;
  const GgmlType type = f32 ? GgmlType::F32 : stored == at::kHalf ? GgmlType::F16 : GgmlType::BF16;
  const at::ScalarType dt = f32 ? at::kFloat : stored;
  g.add_tensor(gguf_name(s.name), type, s.shape, [=, &src] {
    return finish(bytes_of(dt == at::kFloat ? src.tensor_f32(s.name) : src.tensor(s.name).to(dt)));
  });
}

// A linear layer: dense as stored, packed exactly where llama.cpp has kldq's codes, else
// re-quantized (from `original` when given) and reported.
void add_linear(io::GgufWriter& g, const Source& src, const model::TensorSlot& s,
                const std::vector<int64_t>& shape, const Finish& finish,
                const std::optional<io::Checkpoint>& original, ExportReport& report) {
  const std::string layer = s.layer->name();
  const auto f = src.formats().find(layer);
  const bool packed = f != src.formats().end() && !f->second.dense();
  const at::ScalarType stored = packed ? at::kFloat : src.checkpoint().info(s.name).scalar_type;
  const Encoded e = choose(packed ? std::optional(f->second) : std::nullopt, stored, shape[1]);
  if (e.codes_kept)
    report.requantized[layer] = e.requantized;
  else if (!e.requantized.empty())
    report.requantized[layer] = e.requantized + (original ? " from the original weights"
                                                          : " from kldq's dequantized weights");
  else if (packed)
    ++report.exact_layers;
  g.add_tensor(gguf_name(layer + ".weight"), e.type, shape, [=, &src, &original] {
    if (!packed) return finish(bytes_of(src.tensor(s.name)));
    if (e.requantized.empty() || e.codes_kept) return finish(exact_rows(src.packed(layer), e.type));
    const at::Tensor w = original ? original->tensor(layer + ".weight").to(at::kFloat)
                                  : formats::dequantize(src.packed(layer));
    return finish(e.type == GgmlType::Q8_0     ? q8_0_of(w)
                  : e.type == GgmlType::IQ4_NL ? iq4_nl_of(w)
                  : e.type == GgmlType::Q4_1   ? q4_1_of(w)
                                               : q4_0_of(w));
  });
}

}  // namespace

ExportReport export_gguf(const Source& src, const fs::path& out, const ExportOptions& options) {
  const model::ModelConfig& c = src.config();
  const std::string arch = c.arch == model::Arch::QWEN2 ? "qwen2" : "llama";
  io::GgufWriter g;
  add_model_metadata(g, src, arch, options.name);
  add_vocab(g, src.dir(), src.config(), arch);
  std::optional<io::Checkpoint> original;
  // A folded model's weights are no longer the original's (fold.cpp): they re-quantize from
  // kldq's dequantized ones.
  if (!options.original.empty() && src.folded().empty())
    original = io::Checkpoint::open(options.original);
  else if (!options.original.empty())
    log::info(
        "AWQ scales folded: layers without an exact GGUF type re-quantize from kldq's "
        "dequantized weights, not from {}",
        options.original.string());
  ExportReport report;
  for (const auto& s : src.slots()) {
    const bool linear =
        s.role == model::TensorRole::LINEAR_WEIGHT || s.role == model::TensorRole::LINEAR_PART;
    // A packed layer is written at its first stored part; its other parts are inside it.
    if (s.role == model::TensorRole::LINEAR_PART && !s.name.ends_with(".weight_packed")) continue;
    const std::string hf = linear ? s.layer->name() + ".weight" : s.name;
    const bool q = hf.find(".q_proj.") != std::string::npos,
               k = hf.find(".k_proj.") != std::string::npos;
    const int64_t heads =
        c.arch != model::Arch::QWEN2 && (q || k) ? (q ? c.num_heads : c.num_kv_heads) : 0;
    const std::vector<int64_t> shape = linear ? model::linear_shape(c, s.layer->proj) : s.shape;
    // Rows of bytes [shape[0], row bytes], in llama.cpp's q/k row order where it permutes.
    const Finish finish = [heads, rows = shape[0]](const at::Tensor& bytes) {
      const at::Tensor r = bytes.reshape({rows, -1});
      return (heads ? permute_rows(r, heads) : r).contiguous();
    };
    if (linear)
      add_linear(g, src, s, shape, finish, original, report);
    else
      add_plain(g, src, s, finish);
  }
  g.write(out);
  report.bytes = fs::file_size(out);
  report.folded = src.folded();
  return report;
}

}  // namespace kldq::exporting
