// AWQ (Lin et al. 2023, activation-aware weight quantization; their original scale search, without
// llm-compressor's default weight-magnitude term) on one decoder block, with the
// scales kept explicit: a scaled layer computes y = (x / s) Q(W diag(s))^T + b (QLinear's input
// scale), so nothing is folded into the RMSNorms or the previous layer and every layer stays
// restorable on its own (docs/PROTOCOLS.md, "AWQ").
//
//   scaling groups (layers sharing one input, one scale s: [in]):
//     q, k, v   input: the input RMSNorm's output   scored on: the attention's output
//     o         input: the attention heads' output  scored on: o itself (only without GQA, as the
//                                                    reference folds it into v)
//     gate, up  input: the post-attention norm's     scored on: the MLP's output
//     down      input: silu(gate) * up               scored on: down itself
//   scale search: s = mean|x|^alpha per channel, alpha in {0, 1/20, ..., 19/20}, normalised to
//     sqrt(max s * min s) = 1 and rounded to bf16 (the stored precision); the alpha with the least
//     squared error of the scored output over all calibration tokens (alpha = 0 is plain RTN).
//   clipping (every layer but q and k): each (row, group) of W diag(s) clipped to r * its
//     maximum, r in {1, 0.975, ..., 0.5}, the r with the least output error of that group,
//     || (x / s)_g (W_g - Q(clip_r W_g))^T ||^2, computed exactly from the group's Gram matrix of
//     all calibration inputs (the reference samples 512 tokens instead).
#include "awq.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <limits>
#include <map>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/formats/grid.hpp"

namespace kldq::quant {
namespace {

using model::Decoder;
using model::LayerId;
using model::Proj;
using model::QLinear;

enum class Scored { ATTENTION, MLP, LAYER };

struct ScaleGroup {
  std::vector<Proj> projs;  // layers sharing the input and its scale
  Proj input;               // whose captured input they see
  Scored scored;
};

// The inputs of the block's layers on every window: q's (shared by k, v), o's, gate's (shared by
// up) and down's, each [N, T, in] in the compute dtype.
std::map<Proj, at::Tensor> capture(Decoder& m, int b, const at::Tensor& hidden, int64_t batch) {
  std::map<Proj, std::vector<at::Tensor>> parts;
  {
    const Decoder::ScopedObserver observe(m, [&](LayerId id, const at::Tensor& x) {
      if (id.block == b && (id.proj == Proj::Q || id.proj == Proj::O || id.proj == Proj::GATE ||
                            id.proj == Proj::DOWN))
        parts[id.proj].push_back(x.clone());
    });
    for (const auto [w, n] : batches(hidden.size(0), batch)) m.block(b, hidden.narrow(0, w, n));
  }
  std::map<Proj, at::Tensor> x;
  for (auto& [p, v] : parts) x[p] = at::cat(v, 0);
  return x;
}

at::Tensor scored_output(const Decoder& m, int b, const ScaleGroup& g, const at::Tensor& x) {
  switch (g.scored) {
    case Scored::ATTENTION:
      return m.attention(b, x);
    case Scored::MLP:
      return m.mlp(b, x);
    case Scored::LAYER:
      break;
  }
  return m.live_linear({b, g.projs.front()}).forward(x);  // a streamed block's device copy
}

// mean |x| per input channel over all tokens: x [N, T, in] -> [in] fp32.
at::Tensor channel_mean_abs(const at::Tensor& x, int64_t batch) {
  at::Tensor sum = at::zeros({x.size(-1)}, x.options().dtype(at::kFloat));
  for (const auto [w, n] : batches(x.size(0), batch))
    sum += x.narrow(0, w, n).abs().to(at::kFloat).sum(at::IntArrayRef{0, 1});
  return sum / static_cast<double>(x.size(0) * x.size(1));
}

// W diag(s) rounded to nearest on its own grid: [out, in] fp32.
at::Tensor scaled_fake_quant(const at::Tensor& w, const at::Tensor& s,
                             const formats::FormatSpec& spec) {
  const at::Tensor ws = w * s;
  return formats::fake_quantize(ws, formats::make_grid(ws, spec));
}

// The group's scale: the exponent alpha whose scale gives the scored output closest to the
// dense block's. Layers are swapped for dense fake-quantized ones with the input scale during
// the search and put back after.
at::Tensor search_scale(Decoder& m, int b, const ScaleGroup& g, const std::vector<Proj>& members,
                        const at::Tensor& x, const model::LayerFormats& formats,
                        const AwqOptions& o, int64_t batch) {
  std::vector<at::Tensor> ref;  // the dense scored output per batch
  for (const auto [w, n] : batches(x.size(0), batch))
    ref.push_back(scored_output(m, b, g, x.narrow(0, w, n)));
  const at::Tensor mean = channel_mean_abs(x, batch);  // [in]
  std::map<Proj, QLinear> dense;
  for (Proj p : members) dense.emplace(p, m.linear({b, p}));
  double best = std::numeric_limits<double>::infinity();
  at::Tensor best_s;
  for (int a = 0; a < o.grid; ++a) {
    at::Tensor s = mean.pow(static_cast<double>(a) / o.grid).clamp_min(1e-4);
    s = (s / (s.max() * s.min()).sqrt()).to(at::kBFloat16).to(at::kFloat);
    for (Proj p : members) {
      const QLinear& d = dense.at(p);
      const auto& spec = formats.at(LayerId{b, p}.name());
      QLinear trial(scaled_fake_quant(d.weight().to(m.device(), at::kFloat), s, spec).to(m.dtype()),
                    d.has_bias() ? d.bias().to(m.device()) : at::Tensor());
      trial.set_input_scale(s.to(m.dtype()));
      m.set_linear({b, p}, std::move(trial));
    }
    at::Tensor err = at::zeros({}, x.options().dtype(at::kDouble));
    for (size_t k = 0; k < ref.size(); ++k) {
      const int64_t w = static_cast<int64_t>(k) * batch;
      const at::Tensor y = scored_output(m, b, g, x.narrow(0, w, ref[k].size(0)));
      err += (y.to(at::kFloat) - ref[k].to(at::kFloat)).pow(2).sum().to(at::kDouble);
    }
    const double e = err.item<double>();
    if (e < best) best = e, best_s = s;
  }
  for (Proj p : members) m.set_linear({b, p}, dense.at(p));
  if (!best_s.defined())  // every error NaN: non-finite activations
    throw Error(
        fmt::format("awq: model.layers.{}: the scored output is not finite for any scale "
                    "(non-finite calibration activations?)",
                    b));
  return best_s;
}

// w: [out, in] fp32 (already scaled), x: [N, T, in] the layer's input, s: [in] or undefined ->
// w with each (row, group) clipped to the ratio of its maximum with the least output error on
// x / s. Columns are zero-padded to whole groups, which changes no group's grid (absmax, and the
// asymmetric range that always includes 0) and no error.
at::Tensor clip_search(const at::Tensor& w, const at::Tensor& x, const at::Tensor& s,
                       const formats::FormatSpec& spec, const AwqOptions& o, int64_t batch) {
  const int64_t out = w.size(0), in = w.size(1), g = formats::grid_group(spec, in);
  const int64_t G = (in + g - 1) / g, P = G * g;
  const at::Tensor wp = at::constant_pad_nd(w, {0, P - in}).view({out, G, g});
  at::Tensor gram = at::zeros({G, g, g}, w.options());  // per group: sum of x_g^T x_g
  for (const auto [i, n] : batches(x.size(0), batch)) {
    at::Tensor xb = x.narrow(0, i, n).reshape({-1, in});
    xb = xb.to(at::kFloat);
    if (s.defined()) xb = xb / s;
    xb = at::constant_pad_nd(xb, {0, P - in}).view({-1, G, g}).permute({1, 2, 0});  // [G, g, n]
    gram.baddbmm_(xb, xb.transpose(1, 2));
  }
  const at::Tensor amax = wp.abs().amax(2, /*keepdim=*/true);  // [out, G, 1]
  at::Tensor best_err = at::full({out, G, 1}, std::numeric_limits<float>::infinity(), w.options());
  at::Tensor best_bound = amax.clone();
  for (int k = 0; k <= o.clip_steps; ++k) {
    const at::Tensor bound = amax * (1.0 - o.max_shrink * k / o.clip_steps);
    const at::Tensor wc = at::maximum(at::minimum(wp, bound), -bound).reshape({out, P});
    const at::Tensor d =
        (wp.reshape({out, P}) - formats::fake_quantize(wc, formats::make_grid(wc, spec)))
            .view({out, G, g})
            .permute({1, 0, 2});                                            // [G, out, g]
    const at::Tensor err = (at::bmm(d, gram) * d).sum(2).t().unsqueeze(2);  // [out, G, 1]
    const at::Tensor better = err < best_err;
    best_err = at::where(better, err, best_err);
    best_bound = at::where(better, bound, best_bound);
  }
  return at::maximum(at::minimum(wp, best_bound), -best_bound).reshape({out, P}).narrow(1, 0, in);
}

}  // namespace

void awq_block(Decoder& m, int b, const at::Tensor& hidden, const model::LayerFormats& formats,
               const AwqOptions& o, int64_t batch, QuantizedLayers& out) {
  check(o.grid >= 1 && o.clip_steps >= 1, "awq: grid and clip steps must be positive");
  auto quantized = [&](Proj p) {
    const auto f = formats.find(LayerId{b, p}.name());
    return f != formats.end() && formats::has_grid(f->second, m.linear({b, p}).in_features());
  };
  const std::map<Proj, at::Tensor> x = capture(m, b, hidden, batch);
  std::vector<ScaleGroup> groups = {{{Proj::Q, Proj::K, Proj::V}, Proj::Q, Scored::ATTENTION},
                                    {{Proj::GATE, Proj::UP}, Proj::GATE, Scored::MLP},
                                    {{Proj::DOWN}, Proj::DOWN, Scored::LAYER}};
  // o's scale would be folded into v's rows in the reference, possible only when v's outputs
  // are o's inputs one to one (no GQA); kldq follows the reference's grouping.
  if (m.config().num_kv_heads == m.config().num_heads)
    groups.push_back({{Proj::O}, Proj::O, Scored::LAYER});
  std::map<Proj, at::Tensor> scale;  // searched scales, [in] fp32
  for (const ScaleGroup& g : groups) {
    std::vector<Proj> members;
    for (Proj p : g.projs)
      if (quantized(p)) members.push_back(p);
    if (members.empty()) continue;
    const at::Tensor s = search_scale(m, b, g, members, x.at(g.input), formats, o, batch);
    for (Proj p : members) scale[p] = s;
  }
  for (Proj p : model::kAllProjs) {
    if (!quantized(p)) continue;
    const LayerId id{b, p};
    const auto& spec = formats.at(id.name());
    const Proj input = p == Proj::K || p == Proj::V ? Proj::Q : p == Proj::UP ? Proj::GATE : p;
    const at::Tensor s = scale.count(p) ? scale.at(p) : at::Tensor();
    at::Tensor w = m.linear(id).weight().to(m.device(), at::kFloat);  // [out, in]
    if (s.defined()) w = w * s;
    // q and k feed the attention scores through RoPE and softmax, where the reference found
    // clipping to hurt.
    if (p != Proj::Q && p != Proj::K) w = clip_search(w, x.at(input), s, spec, o, batch);
    QuantizedLayer q{formats::pack_on_grid(w, formats::make_grid(w, spec)), s};
    m.quantize_layer(id, q.packed, s);
    q.packed = q.packed.map([&](const at::Tensor& t) { return m.to_storage(b, t); });
    out[id] = std::move(q);
  }
}

}  // namespace kldq::quant
