// Block-sequential calibrated quantization (GPTQ, AWQ): the calibration windows run through
// block b with inputs from the already quantized blocks 0..b-1; block b's layers are quantized
// from what their inputs are then; the block's quantized output feeds block b+1. Memory holds
// the hidden states of the calibration set (and, for AWQ, one block's layer inputs), never the
// whole model's activations.
//
// GPTQ quantizes a block's layers in the order the forward reaches them, each group from inputs
// that pass through the members quantized before it (as the reference implementation's
// "true sequential"): q, k, v (one Hessian: they share the input) -> o -> gate, up -> down.
// Members that share an input and a format run as one GPTQ problem over their stacked rows:
// GPTQ treats rows independently given H, so this is exact and saves Cholesky factorisations.
#include "sequential.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "awq.hpp"
#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/formats/grid.hpp"

namespace kldq::quant {
namespace {

using model::Decoder;
using model::LayerId;
using model::Proj;

// Runs block b over all windows of `hidden` [N, T, H] (outputs discarded unless `update`, which
// writes them back into `hidden`).
void run_block(Decoder& m, int b, const at::Tensor& hidden, int64_t batch, bool update) {
  for (const auto [w, n] : batches(hidden.size(0), batch)) {
    const at::Tensor y = m.block(b, hidden.narrow(0, w, n));
    if (update) hidden.narrow(0, w, n).copy_(y);
  }
}

// Rows [r0, r0 + n) of a grid.
formats::Grid grid_rows(const formats::Grid& g, int64_t r0, int64_t n) {
  formats::Grid s = g;
  s.out = n;
  s.scale = g.scale.narrow(0, r0, n);
  if (g.zero.defined()) s.zero = g.zero.narrow(0, r0, n);
  return s;
}

void gptq_block(Decoder& m, int b, const at::Tensor& hidden, const model::LayerFormats& formats,
                const MethodOptions& o, QuantizedLayers& out, double& err, double& rtn_err) {
  const std::vector<std::vector<Proj>> steps = {
      {Proj::Q, Proj::K, Proj::V}, {Proj::O}, {Proj::GATE, Proj::UP}, {Proj::DOWN}};
  for (const auto& step : steps) {
    // Members by format, in model order.
    std::vector<std::pair<formats::FormatSpec, std::vector<Proj>>> sets;
    for (Proj p : step) {
      const auto f = formats.find(LayerId{b, p}.name());
      if (f == formats.end() || !formats::has_grid(f->second, m.linear({b, p}).in_features()))
        continue;
      auto it = std::find_if(sets.begin(), sets.end(),
                             [&](const auto& s) { return s.first.name() == f->second.name(); });
      if (it == sets.end())
        sets.push_back({f->second, {p}});
      else
        it->second.push_back(p);
    }
    if (sets.empty()) continue;
    Hessian h;
    const Proj first = step.front();
    {
      const Decoder::ScopedObserver observe(m, [&](LayerId id, const at::Tensor& x) {
        if (id.block == b && id.proj == first) h.add(x);
      });
      run_block(m, b, hidden, o.batch, false);
    }
    for (const auto& [spec, projs] : sets) {
      std::vector<at::Tensor> ws;
      std::string names;
      for (Proj p : projs) {
        ws.push_back(m.linear({b, p}).weight().to(m.device(), at::kFloat));
        names += (names.empty() ? "" : "+") + LayerId{b, p}.name();
      }
      const GptqResult r = gptq_quantize(at::cat(ws, 0), h.matrix(), spec, o.gptq, names);
      log::debug("gptq: {} ({}): output error {:.4g} (RTN {:.4g}), {} dead inputs, damp {}", names,
                 spec.name(), r.error, r.rtn_error, r.dead, r.damp);
      err += r.error, rtn_err += r.rtn_error;
      int64_t r0 = 0;
      for (Proj p : projs) {
        const int64_t rows = m.linear({b, p}).out_features();
        QuantizedLayer q{
            formats::pack_on_grid(r.q.narrow(0, r0, rows), grid_rows(r.grid, r0, rows)), {}};
        m.quantize_layer({b, p}, q.packed);
        q.packed = q.packed.map([&](const at::Tensor& t) { return m.to_storage(b, t); });
        out[LayerId{b, p}] = std::move(q);
        r0 += rows;
      }
    }
  }
}

}  // namespace

QuantizedLayers quantize_calibrated(Decoder& m, const model::LayerFormats& formats,
                                    const MethodOptions& o, const at::Tensor& calib) {
  check(o.batch >= 1, "calibrated quantization: batch must be positive");
  if (!calib.defined() || calib.dim() != 2 || calib.size(0) < 1 || calib.size(1) < 1)
    throw ConfigError(
        fmt::format("--method {}: needs calibration windows (--calib)", method_name(o.method)));
  QuantizedLayers out;
  // Formats are checked before any work: a bad plan fails in a second, not after an hour.
  for (const LayerId& id : m.linear_ids()) {
    const auto f = formats.find(id.name());
    if (f == formats.end()) continue;
    if (f->second.dense()) continue;
    if (!formats::has_grid(f->second, m.linear(id).in_features()))
      throw UnsupportedError(fmt::format(
          "--method {}: layer {}: format {} has no quantization grid for {} inputs ({} needs "
          "int2/3/4, int8, per-channel fp8, or nf4/fp4 with inputs a multiple of the block)",
          method_name(o.method), id.name(), f->second.name(), m.linear(id).in_features(),
          method_name(o.method)));
  }
  at::InferenceMode guard;
  const Decoder::Snapshot dense = m.snapshot();
  try {
    const int64_t N = calib.size(0), T = calib.size(1), H = m.config().hidden_size;
    at::Tensor hidden =
        at::empty({N, T, H}, at::TensorOptions().dtype(m.dtype()).device(m.device()));
    for (const auto [w, n] : batches(N, o.batch))
      hidden.narrow(0, w, n).copy_(m.embed(calib.narrow(0, w, n)));
    Progress progress(fmt::format("{} calibration", method_name(o.method)), m.num_blocks(),
                      "blocks");
    double err = 0, rtn_err = 0;
    for (int b = 0; b < m.num_blocks(); ++b) {
      // Dense formats first: a restored layer is its original weight in every later pass.
      for (Proj p : model::kAllProjs) {
        const LayerId id{b, p};
        const auto f = formats.find(id.name());
        if (f == formats.end() || formats::has_grid(f->second, m.linear(id).in_features()))
          continue;
        QuantizedLayer q{formats::quantize_rtn(m.linear(id).weight().to(m.device()), f->second),
                         {}};
        m.quantize_layer(id, q.packed);
        q.packed = q.packed.map([&](const at::Tensor& t) { return m.to_storage(b, t); });
        out[id] = std::move(q);
      }
      if (o.method == Method::GPTQ)
        gptq_block(m, b, hidden, formats, o, out, err, rtn_err);
      else
        awq_block(m, b, hidden, formats, o.awq, o.batch, out);
      run_block(m, b, hidden, o.batch, true);
      progress.advance(1);
    }
    if (o.method == Method::GPTQ && rtn_err > 0)
      log::info("gptq: calibration output error {:.4f} x round-to-nearest's, summed over layers",
                err / rtn_err);
  } catch (...) {
    m.restore(dense);
    throw;
  }
  m.restore(dense);
  return out;
}

}  // namespace kldq::quant
