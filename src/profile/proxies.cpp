// Sensitivity proxies: weight error statistics, the layer-output relative error through the
// decoder's observer, the empirical-Fisher-weighted error through libtorch autograd, Spearman.
#include "kldq/profile/proxies.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"

namespace kldq::profile {
namespace {

using model::Decoder;
using model::LayerId;
using model::QLinear;

// The weight a layer applies to its raw input x, [out, in] fp32: dequantized to the compute
// dtype first (the rounding the forward sees), divided by the input scale when there is one.
at::Tensor applied_weight(const QLinear& l, at::ScalarType dtype) {
  at::Tensor w = l.effective_weight(dtype).to(at::kFloat);
  if (l.input_scale().defined()) w = w / l.input_scale().to(at::kFloat);
  return w;
}

double sum_sq(const at::Tensor& t) {
  return t.square().sum(at::kDouble).item<double>();
}

// Adds `v` (a 0-dim double tensor on the device) to an accumulator without a device sync per
// call. Out of place: the accumulator may outlive the mode (inference or not) it was made in.
void accumulate(at::Tensor& acc, const at::Tensor& v) {
  acc = acc.defined() ? acc + v : v;
}

double value(const at::Tensor& acc) {
  return acc.defined() ? acc.item<double>() : 0.0;
}

// Restores a decoder's layers when the gradient pass ends, also by an exception.
struct RestoreLayers {
  Decoder& m;
  std::vector<LayerId> ids;
  std::vector<QLinear> saved;
  ~RestoreLayers() {
    for (size_t i = 0; i < ids.size(); ++i) m.set_linear(ids[i], saved[i]);
  }
};

// The mean next-token cross-entropy of the windows `x` [B, T] (their B x (T-1) predictions),
// back-propagated to every leaf of the decoder's graph. Memory stays at one block's graph:
//   a forward without autograd keeps every block's input [B, T, H] (the observer, if set, sees
//   this pass only);
//   the LM head runs on `chunk` positions of one window at a time from the final hidden states,
//   accumulating their gradient (no [tokens x vocab] logits, one chunk's head graph at a time);
//   then, from the last block to the first, each block is re-run from its input with autograd
//   and back-propagated, its input's gradient feeding the block before (per-block activation
//   checkpointing: one extra forward instead of every block's activations at once).
void backward_batch(Decoder& m, const at::Tensor& x, int64_t chunk) {
  const int64_t B = x.size(0), T = x.size(1);
  std::vector<at::Tensor> inputs;  // [B, T, H] per block
  at::Tensor h;
  {
    const at::NoGradGuard no_grad;
    h = m.embed(x);
    for (int b = 0; b < m.num_blocks(); ++b) {
      inputs.push_back(h);
      h = m.block(b, h);
    }
  }
  h.requires_grad_(true);  // [B, T, H] final hidden states, a leaf for the head's gradient
  const at::Tensor tgt = x.narrow(1, 1, T - 1).to(m.device());  // [B, T-1]
  const double rows = static_cast<double>(B * (T - 1));
  for (int64_t b = 0; b < B; ++b)
    for (const auto [t, len] : batches(T - 1, chunk)) {
      // fp32 log-softmax, as transformers computes the loss from upcast logits.
      const at::Tensor logits =  // [len, V]
          m.head(h.select(0, b).narrow(0, t, len).unsqueeze(0)).squeeze(0).to(at::kFloat);
      const at::Tensor loss = at::cross_entropy_loss(logits, tgt.select(0, b).narrow(0, t, len), {},
                                                     at::Reduction::Sum);
      (loss / rows).backward();
    }
  at::Tensor grad = h.grad();                   // d loss / d output of the block below
  const Decoder::ScopedObserver silent(m, {});  // the re-run blocks are not observed again
  for (int b = m.num_blocks() - 1; b >= 0; --b) {
    // Block 0's input (the embedding) needs no gradient.
    const at::Tensor in = inputs[static_cast<size_t>(b)].requires_grad_(b > 0);
    m.block(b, in).backward(grad);
    grad = b > 0 ? in.grad() : at::Tensor();
    inputs[static_cast<size_t>(b)] = at::Tensor();
  }
}

}  // namespace

int64_t calibration_gradients(Decoder& m, const at::Tensor& ids_in, int64_t batch, int64_t chunk,
                              const GradientFn& fn) {
  check(ids_in.dim() == 2 && ids_in.size(1) >= 2 && batch >= 1 && chunk >= 1,
        "calibration_gradients: bad calibration windows or options");
  // Autograd records nothing under InferenceMode (run_profile's): leave it for this pass.
  c10::InferenceMode no_inference(false);
  at::AutoGradMode grad_mode(true);
  RestoreLayers restore{m, m.linear_ids(), {}};
  std::vector<at::Tensor> leaves;  // [out, in] per layer, requires grad
  for (const LayerId& id : restore.ids) {
    const QLinear& l = m.linear(id);
    if (l.is_packed())
      throw InternalError(fmt::format("calibration_gradients: layer {} is packed", id.name()));
    // Autograd cannot save inference tensors for backward, and the norms' weights are saved too.
    if (l.weight().is_inference())
      throw InternalError(
          "calibration_gradients: the decoder was loaded under InferenceMode; load it outside");
    // A leaf sharing the weight's storage (no copy): the decoder's tensors may be views into its
    // fused q/k/v and gate/up buffers, which autograd would not treat as leaves.
    at::Tensor w = l.weight().detach();
    w.requires_grad_(true);
    QLinear leaf(w, l.bias());
    if (l.input_scale().defined()) leaf.set_input_scale(l.input_scale());
    restore.saved.push_back(l);
    leaves.push_back(w);
    m.set_linear(id, std::move(leaf));
  }
  // A copy made outside InferenceMode: the loss saves its targets for backward.
  const at::Tensor ids = ids_in.clone();
  int64_t count = 0;
  for (const auto [w, B] : batches(ids.size(0), batch)) {
    ++count;
    backward_batch(m, ids.narrow(0, w, B), chunk);
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < leaves.size(); ++i) {
      fn(restore.ids[i], leaves[i].grad());
      leaves[i].mutable_grad() = at::Tensor();  // the next batch's gradient starts from zero
    }
  }
  return count;
}

LayerProxies layer_proxies(Decoder& m, const at::Tensor& ids, const Layers& dense,
                           const Layers& quantized, int64_t batch, int64_t chunk) {
  const at::ScalarType dtype = m.dtype();
  const std::vector<LayerId> all = m.linear_ids();
  // dW [out, in] fp32, recomputed where needed rather than held for every layer at once (an fp32
  // copy of the model): dequantizing a layer costs far less than the GEMMs around it.
  auto error_of = [&](const LayerId& id) {
    return applied_weight(dense.at(id), dtype) - applied_weight(quantized.at(id), dtype);
  };
  LayerProxies out;
  for (const LayerId& id : all) {
    check(!dense.at(id).input_scale().defined() && !dense.at(id).is_packed(),
          fmt::format("proxies: layer {} is not a plain dense layer", id.name()));
    m.set_linear(id, dense.at(id));
    const at::Tensor w = applied_weight(dense.at(id), dtype);
    LayerProxy& p = out[id];
    p.numel = static_cast<double>(w.numel());
    p.w2 = sum_sq(w);
    p.dw2 = sum_sq(w - applied_weight(quantized.at(id), dtype));
  }
  // Device accumulators (0-dim double) per layer, read once at the end.
  model::LayerMap<at::Tensor> ref2, err2, fisher;
  at::Tensor last_x, last_xf;  // q/k/v and gate/up share one input: convert it once
  const auto observer = [&](const LayerId& id, const at::Tensor& x) {
    at::NoGradGuard no_grad;
    if (!x.is_same(last_x)) {
      last_x = x;
      last_xf = x.detach().reshape({-1, x.size(-1)}).to(at::kFloat);  // [B*T, in]
    }
    const at::Tensor w = applied_weight(dense.at(id), dtype);           // [out, in]
    const at::Tensor dw = w - applied_weight(quantized.at(id), dtype);  // [out, in]
    // Products in fp32 and squared sums in double: the error is a few per cent of the output,
    // and the sums run over every calibration token.
    accumulate(ref2[id], at::linear(last_xf, w).square().sum(at::kDouble));
    accumulate(err2[id], at::linear(last_xf, dw).square().sum(at::kDouble));
  };
  {  // the calibration pass without autograd is observed; its re-run blocks are not
    const Decoder::ScopedObserver observe(m, observer);
    calibration_gradients(m, ids, batch, chunk, [&](const LayerId& id, const at::Tensor& g) {
      accumulate(fisher[id], (g.to(at::kFloat).square() * error_of(id).square()).sum(at::kDouble));
    });
  }
  last_x = last_xf = at::Tensor();
  for (auto& [id, p] : out) {
    p.out_ref2 = value(ref2[id]);
    p.out_err2 = value(err2[id]);
    p.fisher = value(fisher[id]);
  }
  return out;
}

ProxyStats unit_proxies(const LayerProxies& layers, const std::vector<LayerId>& unit) {
  LayerProxy s;
  for (const LayerId& id : unit) {
    const LayerProxy& p = layers.at(id);
    s.numel += p.numel;
    s.w2 += p.w2;
    s.dw2 += p.dw2;
    s.out_ref2 += p.out_ref2;
    s.out_err2 += p.out_err2;
    s.fisher += p.fisher;
  }
  ProxyStats r;
  r.weight_mse = s.dw2 / s.numel;
  r.weight_sqnr_db =
      s.dw2 > 0 ? 10.0 * std::log10(s.w2 / s.dw2) : std::numeric_limits<double>::infinity();
  r.output_rel_error = std::sqrt(s.out_err2 / s.out_ref2);  // NaN when no input reached it
  r.fisher = s.fisher;
  return r;
}

namespace {

// 1-based ranks, ties given the mean of the ranks they span.
std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && v[order[j]] == v[order[i]]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j - 1) + 1.0;  // ranks i+1 .. j
    for (size_t k = i; k < j; ++k) r[order[k]] = avg;
    i = j;
  }
  return r;
}

}  // namespace

std::optional<double> spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check(x.size() == y.size(), "spearman: the two series differ in length");
  const size_t n = x.size();
  auto finite = [](double v) { return std::isfinite(v); };
  if (n < 3 || !std::all_of(x.begin(), x.end(), finite) || !std::all_of(y.begin(), y.end(), finite))
    return std::nullopt;
  const std::vector<double> rx = ranks(x), ry = ranks(y);
  const double mean = 0.5 * static_cast<double>(n + 1);  // the mean of any ranking of n values
  double cov = 0, vx = 0, vy = 0;
  for (size_t i = 0; i < n; ++i) {
    cov += (rx[i] - mean) * (ry[i] - mean);
    vx += (rx[i] - mean) * (rx[i] - mean);
    vy += (ry[i] - mean) * (ry[i] - mean);
  }
  if (vx == 0 || vy == 0) return std::nullopt;
  return std::clamp(cov / std::sqrt(vx * vy), -1.0, 1.0);
}

}  // namespace kldq::profile
