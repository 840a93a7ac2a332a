// AWQ's input scales folded away for export (docs/FORMATS.md, "Export"). kldq keeps every scaled
// layer as y = (x / s) Q(W diag(s))^T + b (QLinear's input scale, so each layer stays restorable on
// its own); no other tool has such a layer, so the export moves the division to what makes x:
//
//   scaled layers      their input x                            the fold
//   q, k, v (one s)    n(h) * gamma   (input_layernorm)         gamma / s
//   gate, up (one s)   n(h) * gamma   (post_attention_layernorm) gamma / s
//   o                  x_j = sum_t p_t v_t,j (the heads' output) v_proj's row j and bias_j / s_j
//                      (only without GQA: then v's output j is o's input j)
//   down               silu(gate)_j * up_j                      up_proj's row j (and bias) / s_j
//
// A member of a group restored to a dense format carries no scale but sees x / s after the fold,
// so its columns are multiplied by s. A quantized v or up is divided through its scales (per row,
// or per (row, group/block)); its codes are untouched.
// Rounding: the fold is computed in fp32 and rounded once. Folded norm weights are kept in fp32
// (Source::tensor; a few KiB), folded weight scales round to their fp16 (relative error <= 2^-11;
// a scale that would become subnormal or zero is refused), folded dense weights and biases to
// their dtype (bf16 <= 2^-8).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <optional>

#include "kldq/core/error.hpp"
#include "kldq/export/export.hpp"

namespace kldq::exporting {
namespace {

using model::LayerId;
using model::Proj;

struct FoldGroup {
  std::vector<Proj> members;  // layers sharing one input and its scale
  const char* norm;           // the norm whose weight makes the input, or nullptr
  std::optional<Proj> rows;   // else the layer whose output rows make it
};

const FoldGroup kFoldGroups[] = {
    {{Proj::Q, Proj::K, Proj::V}, "input_layernorm", std::nullopt},
    {{Proj::GATE, Proj::UP}, "post_attention_layernorm", std::nullopt},
    {{Proj::O}, nullptr, Proj::V},
    {{Proj::DOWN}, nullptr, Proj::UP},
};

std::string target_of(int b, const FoldGroup& g) {
  return g.norm ? fmt::format("model.layers.{}.{}", b, g.norm) : LayerId{b, *g.rows}.name();
}

// p with row r of its weight divided by d[r] (d: [out] fp32), through its scales: every format
// with a scale per row or per (row, group/block) folds; ConfigError naming `layer` otherwise.
formats::PackedWeight divide_rows(const formats::PackedWeight& p, const at::Tensor& d,
                                  const std::string& where) {
  const formats::FormatSpec& spec = p.spec;
  const bool flat = spec.traits().blocking == formats::Blocking::FLAT_BLOCK;
  if (!p.scales.defined() || spec.per_tensor || (flat && p.in % spec.group != 0) ||
      p.scales.numel() % p.out != 0)
    throw ConfigError(fmt::format(
        "{} ({}): has no scale per output row, so the AWQ input scale of the layer it feeds "
        "cannot be folded into it",
        where, spec.name()));
  formats::PackedWeight q = p;
  const at::Tensor s = p.scales.to(at::kFloat).reshape({p.out, -1}) / d.unsqueeze(1);
  q.scales = s.to(p.scales.scalar_type()).reshape(p.scales.sizes()).contiguous();
  if (!at::isfinite(q.scales.to(at::kFloat)).all().item<bool>())
    throw ConfigError(
        fmt::format("{} ({}): folding the next layer's AWQ input scale overflows "
                    "its {} scales",
                    where, spec.name(), c10::toString(p.scales.scalar_type())));
  return q;
}

// The fold of a whole model: each norm's divisor, each dense layer's column factor and each
// layer's row divisor (all [n] fp32), and where every scaled layer's scale went.
struct Folds {
  std::map<std::string, at::Tensor> norms, cols, rows;
  std::map<std::string, std::string> folded;
};

// The one scale of group `g` in block b ([in] fp32; undefined when no member is scaled), with
// the members that carry none in `unscaled`. ConfigError when members' scales differ.
at::Tensor group_scale(int b, const FoldGroup& g, const io::Checkpoint& ck,
                       const std::set<std::string>& scaled, std::vector<std::string>& unscaled,
                       const std::string& dir) {
  at::Tensor s;
  std::string first;
  for (Proj p : g.members) {
    const std::string name = LayerId{b, p}.name();
    if (!scaled.count(name)) {
      unscaled.push_back(name);
      continue;
    }
    const at::Tensor t = ck.tensor(name + ".input_scale").to(at::kFloat);
    if (!s.defined()) {
      s = t, first = name;
    } else if (!at::equal(s, t)) {
      throw ConfigError(fmt::format(
          "{}: layers '{}' and '{}' share one input but carry different AWQ input scales, which "
          "cannot both be folded into {}",
          dir, first, name, target_of(b, g)));
    }
  }
  return s;
}

Folds plan_folds(const model::ModelConfig& c, const io::Checkpoint& ck,
                 const model::LayerFormats& formats, const std::set<std::string>& scaled,
                 const std::string& dir) {
  Folds f;
  for (int b = 0; b < c.num_layers; ++b)
    for (const FoldGroup& g : kFoldGroups) {
      std::vector<std::string> unscaled;
      const at::Tensor s = group_scale(b, g, ck, scaled, unscaled, dir);
      if (!s.defined()) continue;
      std::string first;  // a scaled member, for messages
      for (Proj p : g.members)
        if (scaled.count(LayerId{b, p}.name()))
          first = LayerId{b, p}.name(), f.folded[first] = "into " + target_of(b, g);
      if (g.rows == Proj::V && c.num_kv_heads != c.num_heads)
        throw ConfigError(fmt::format(
            "{}: layer '{}' carries an AWQ input scale, which folds into v_proj's rows only "
            "without grouped-query attention ({} key/value heads for {} heads)",
            dir, first, c.num_kv_heads, c.num_heads));
      for (const std::string& name : unscaled) {
        const auto spec = formats.find(name);
        if (spec != formats.end() && !spec->second.dense())
          throw ConfigError(fmt::format(
              "{}: layer '{}' is quantized without the AWQ input scale of '{}', which shares its "
              "input; its codes cannot absorb the fold",
              dir, name, first));
        f.cols[name] = s;
      }
      (g.norm ? f.norms[target_of(b, g) + ".weight"] : f.rows[target_of(b, g)]) = s;
    }
  return f;
}

}  // namespace

void Source::fold_input_scales(const std::set<std::string>& scaled) {
  if (scaled.empty()) return;
  const std::string dir = dir_.string();
  const Folds f = plan_folds(config_, ck_, formats_, scaled, dir);
  for (const auto& [norm, s] : f.norms) folded_tensors_[norm] = tensor(norm).to(at::kFloat) / s;
  std::set<std::string> touched;
  for (const auto& [layer, _] : f.cols) touched.insert(layer);
  for (const auto& [layer, _] : f.rows) touched.insert(layer);
  for (const std::string& layer : touched) {
    const auto c = f.cols.find(layer);
    const auto r = f.rows.find(layer);
    const auto spec = formats_.find(layer);
    if (spec != formats_.end() && !spec->second.dense()) {  // rows only (plan_folds checked)
      folded_packed_[layer] =
          divide_rows(packed(layer), r->second, dir + ": layer '" + layer + "'");
    } else {
      at::Tensor w = tensor(layer + ".weight").to(at::kFloat);  // [out, in]
      if (c != f.cols.end()) w = w * c->second;
      if (r != f.rows.end()) w = w / r->second.unsqueeze(1);
      folded_tensors_[layer + ".weight"] = w;
    }
    if (r != f.rows.end() && ck_.contains(layer + ".bias"))
      folded_tensors_[layer + ".bias"] = tensor(layer + ".bias").to(at::kFloat) / r->second;
  }
  folded_ = f.folded;
}

}  // namespace kldq::exporting
