// The profile's passes: scoring, layer states, cached passes, groups of units.
#include "passes.hpp"

#include <ATen/ATen.h>

#include <cmath>

#include "kldq/core/batches.hpp"
#include "kldq/model/head_kl.hpp"

namespace kldq::profile::detail {

KlStats Scores::stats() const {
  const at::Tensor k = at::cat(kl).to(at::kCPU, at::kDouble);
  const int64_t n = k.numel();
  KlStats s;
  s.mean = k.mean().item<double>();
  s.stderr_ = n > 1 ? k.std().item<double>() / std::sqrt(double(n)) : 0.0;
  s.top1 = at::cat(top1).to(at::kCPU, at::kDouble).mean().item<double>();
  return s;
}

void score(const Decoder& m, const std::vector<at::Tensor>& hs, const at::Tensor& h_ref,
           const at::Tensor& ids, int64_t chunk, std::vector<Scores>& out) {
  const int64_t B = h_ref.size(0), T = h_ref.size(1), H = h_ref.size(2), rows = B * (T - 1);
  auto positions = [&](const at::Tensor& h) {  // normed [B*(T-1), H]
    return model::HiddenRows{&m, m.final_norm(h).narrow(1, 0, T - 1).reshape({rows, H}), true};
  };
  const model::HiddenRows hr = positions(h_ref);
  std::vector<model::HiddenRows> hq;
  for (const at::Tensor& h : hs) hq.push_back(positions(h));
  const at::Tensor tgt = ids.narrow(1, 1, T - 1).reshape({rows}).to(m.device());
  model::score_rows(hq, &hr, tgt, chunk, [&](size_t k, const kernels::TokenKl& t) {
    out[k].kl.push_back(t.kl);
    out[k].top1.push_back(t.same_top1);
  });
}

States::~States() {
  try {
    for (const auto& [id, w] : saved) dense.at(id).weight().copy_(w);
    if (model) model->drop_copies();  // a streamed copy may still hold a quantized state
    if (model)
      for (const LayerId& id : model->linear_ids())
        if (quantized.contains(id) && quantized.at(id).input_scale().defined())
          model->set_linear(id, dense.at(id));
  } catch (...) {  // a device error already being reported; nothing more to do
  }
}

void States::set(Decoder& m, const std::vector<LayerId>& ids, bool quant) {
  for (const LayerId& id : ids) {
    const QLinear &d = dense.at(id), &q = quantized.at(id);
    if (q.input_scale().defined()) {
      m.set_linear(id, quant ? q : d);
      continue;
    }
    if (quant == saved.contains(id)) continue;  // already so: no block brought in
    const QLinear& live = m.live_linear(id);
    if (quant) {
      saved.emplace(id, live.weight().clone());
      const QLinear on_device =
          q.map([&](const at::Tensor& t) { return t.to(m.device(), /*non_blocking=*/true); });
      live.weight().copy_(on_device.effective_weight(m.dtype()));
    } else {
      live.weight().copy_(saved.at(id));
      saved.erase(id);
    }
  }
}

std::vector<LayerId> block_layers(int b) {
  std::vector<LayerId> layers;
  for (model::Proj p : model::kAllProjs) layers.push_back({b, p});
  return layers;
}

void cache_pass(Decoder& m, States& st, bool quantized, const at::Tensor& ids, int64_t batch,
                std::vector<at::Tensor>* inputs, bool on_host, at::Tensor& final) {
  const int64_t N = ids.size(0), T = ids.size(1), H = m.config().hidden_size;
  final = at::empty({N, T, H}, at::TensorOptions().dtype(m.dtype()).device(m.device()));
  for (const Batch w : batches(N, batch))
    final.narrow(0, w.start, w.size).copy_(m.embed(ids.narrow(0, w.start, w.size)));
  if (inputs) inputs->clear();
  for (int b = 0; b < m.num_blocks(); ++b) {
    if (inputs)
      inputs->push_back(on_host && m.device().is_cuda() ? final.to(c10::kCPU).pin_memory()
                        : on_host                       ? final.to(c10::kCPU, false, true)
                                                        : final.clone());
    const std::vector<LayerId> layers = block_layers(b);
    st.set(m, layers, quantized);
    for (const Batch w : batches(N, batch))
      final.narrow(0, w.start, w.size).copy_(m.block(b, final.narrow(0, w.start, w.size)));
    st.set(m, layers, false);
  }
}

std::vector<at::Tensor> run_group(Decoder& m, States& st, const std::vector<Unit>& units,
                                  const std::vector<at::Tensor>& inputs, const at::Tensor& ids,
                                  int64_t w, int64_t B, const Options& o) {
  const bool restore = o.mode == Mode::RESTORE_ONE;
  std::vector<at::Tensor> hs(units.size());  // [B, T, H] each
  auto start = [&](const Unit& u) { return o.cached ? u.block : 0; };
  int first = m.num_blocks();
  for (const Unit& u : units) first = std::min(first, start(u));
  for (int b = first; b < m.num_blocks(); ++b) {
    const std::vector<LayerId> layers = block_layers(b);
    st.set(m, layers, restore);
    for (size_t k = 0; k < units.size(); ++k) {
      const Unit& u = units[k];
      if (b == start(u))
        hs[k] = o.cached ? inputs[static_cast<size_t>(b)].narrow(0, w, B).to(m.device())
                         : m.embed(ids.narrow(0, w, B));
      if (b < start(u)) continue;
      if (b == u.block) st.set(m, u.layers, !restore);
      hs[k] = m.block(b, hs[k]);
      if (b == u.block) st.set(m, u.layers, restore);
    }
    // Back to dense before the next block: a streamed block's copy may be dropped, and the
    // originals set aside stay one block's (restore-one would otherwise hold a second copy of
    // every resident weight). The cost, a block's dequantization per group and batch, is small
    // against the group's forwards.
    st.set(m, layers, false);
  }
  return hs;
}

}  // namespace kldq::profile::detail
