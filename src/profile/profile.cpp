// Sensitivity profile: unit list, cached block inputs, per-unit KL against the reference.
#include "kldq/profile/profile.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/kernels/kl.hpp"

namespace kldq::profile {
namespace {

using model::Decoder;
using model::LayerId;
using model::QLinear;

// Per-token KL and top-1 agreement, accumulated over batches.
struct Scores {
  std::vector<at::Tensor> kl, top1;
  KlStats stats() const {
    const at::Tensor k = at::cat(kl).to(at::kCPU, at::kDouble);
    const int64_t n = k.numel();
    KlStats s;
    s.mean = k.mean().item<double>();
    s.stderr_ = n > 1 ? k.std().item<double>() / std::sqrt(double(n)) : 0.0;
    s.top1 = at::cat(top1).to(at::kCPU, at::kDouble).mean().item<double>();
    return s;
  }
};

// KL of several final hidden states `hs[k]` [B, T, H] of `m` against the reference's `h_ref`,
// positions 0..T-2 (each predicts the next calibration token), LM heads a chunk of positions at
// a time. Each chunk's reference logits are computed once and shared by every state: for
// 1.5B the LM head is a third of a unit's work, so scoring units in groups removes most of the
// reference's share. Each state is normalised once, over all its windows, before its chunks.
void score(const Decoder& m, const std::vector<at::Tensor>& hs, const at::Tensor& h_ref,
           const at::Tensor& ids, int64_t chunk, std::vector<Scores>& out) {
  const int64_t B = h_ref.size(0), T = h_ref.size(1), H = h_ref.size(2), rows = B * (T - 1);
  auto positions = [&](const at::Tensor& h) {  // normed [B*(T-1), H]
    return m.final_norm(h).narrow(1, 0, T - 1).reshape({rows, H});
  };
  const at::Tensor hr = positions(h_ref);
  std::vector<at::Tensor> hq;
  for (const at::Tensor& h : hs) hq.push_back(positions(h));
  const at::Tensor tgt = ids.narrow(1, 1, T - 1).reshape({rows}).to(m.device());
  for (const auto [r, len] : batches(rows, chunk)) {
    const at::Tensor ref = m.logits(hr.narrow(0, r, len));  // [len, V]
    for (size_t k = 0; k < hq.size(); ++k) {
      const auto t =
          kernels::token_kl(m.logits(hq[k].narrow(0, r, len)), ref, tgt.narrow(0, r, len));
      out[k].kl.push_back(t.kl);
      out[k].top1.push_back(t.same_top1);
    }
  }
}

// The model's layers in two states. A quantized state is written into the dense weight in
// place (the packed layer's dequantized weight, exactly what its forward multiplies by), the
// original kept aside until restored: the decoder keeps its fused q/k/v and gate/up GEMMs and
// runs no dequantization per forward, and every state runs the reference's arithmetic. A layer
// with an input scale ((x / s) W^T) is swapped in whole instead, since folding s into W would
// round differently. The weights written are the running ones (Decoder::live_linear): a streamed
// block's device copy, so every change is undone before the loop leaves the block.
struct States {
  std::map<std::string, QLinear> dense, quantized;  // the model's own layers; quantized kept
                                                    // where their block's weights are kept
  std::map<std::string, at::Tensor> saved;          // originals of the layers now quantized
  States() = default;
  States(const States&) = delete;
  States& operator=(const States&) = delete;
  // The model is returned dense also when a pass throws.
  ~States() {
    try {
      for (const auto& [name, w] : saved) dense.at(name).weight().copy_(w);
      if (model) model->drop_copies();  // a streamed copy may still hold a quantized state
      if (model)
        for (const LayerId& id : model->linear_ids())
          if (quantized.count(id.name()) && quantized.at(id.name()).input_scale().defined())
            model->set_linear(id, dense.at(id.name()));
    } catch (...) {  // a device error already being reported; nothing more to do
    }
  }
  Decoder* model = nullptr;  // for the destructor's swaps
  void set(Decoder& m, const std::vector<LayerId>& ids, bool quant) {
    for (const LayerId& id : ids) {
      const std::string name = id.name();
      const QLinear &d = dense.at(name), &q = quantized.at(name);
      if (q.input_scale().defined()) {
        m.set_linear(id, quant ? q : d);
        continue;
      }
      if (quant == (saved.count(name) != 0)) continue;  // already so: no block brought in
      const QLinear& live = m.live_linear(id);
      if (quant) {
        saved.emplace(name, live.weight().clone());
        const QLinear on_device =
            q.map([&](const at::Tensor& t) { return t.to(m.device(), /*non_blocking=*/true); });
        live.weight().copy_(on_device.effective_weight(m.dtype()));
      } else {
        live.weight().copy_(saved.at(name));
        saved.erase(name);
      }
    }
  }
};

std::vector<LayerId> block_layers(int b) {
  std::vector<LayerId> layers;
  for (model::Proj p : model::kAllProjs) layers.push_back({b, p});
  return layers;
}

// Runs every window through the model, block by block (each block over all windows, a batch at a
// time), in the dense state or, with `quantized`, the fully quantized one; fills `inputs` (block
// inputs, when not null; in host memory with `on_host`) and `final` ([N, T, H]). Block-major, a
// block is quantized in place only while it runs, so the originals set aside are one block's.
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

// One group of units on windows [w, w + B): each unit's final hidden state [B, T, H]. Block-major:
// block b runs for every unit that has reached it (in the base state: dense for quantize-one,
// quantized for restore-one), with the unit's own layers flipped while its first block runs. A
// unit starts at its block from the cached input, or (naive) at block 0 from the embedding.
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

// Units whose states ([batch, T, H] each) fit in `bytes`, at least 1 and at most 32.
size_t units_per_group(const model::ModelConfig& c, int64_t batch, int64_t T, c10::ScalarType dtype,
                       double bytes) {
  const double per_unit = double(batch * T * c.hidden_size) * double(c10::elementSize(dtype));
  return static_cast<size_t>(std::clamp(bytes / per_unit, 1.0, 32.0));
}

}  // namespace

size_t group_size(const Decoder& m, int64_t batch, int64_t T, double bytes) {
  return units_per_group(m.config(), batch, T, m.dtype(), bytes);
}

Mode parse_mode(const std::string& s, const char* option) {
  if (s == "quantize-one") return Mode::QUANTIZE_ONE;
  if (s == "restore-one") return Mode::RESTORE_ONE;
  throw ConfigError(fmt::format("{} {}: expected quantize-one or restore-one", option, s));
}

Granularity parse_granularity(const std::string& s, const char* option) {
  if (s == "linear") return Granularity::LINEAR;
  if (s == "half-block") return Granularity::HALF_BLOCK;
  if (s == "block") return Granularity::BLOCK;
  throw ConfigError(fmt::format("{} {}: expected linear, half-block or block", option, s));
}

const char* mode_name(Mode m) {
  return m == Mode::QUANTIZE_ONE ? "quantize-one" : "restore-one";
}

const char* granularity_name(Granularity g) {
  return g == Granularity::LINEAR       ? "linear"
         : g == Granularity::HALF_BLOCK ? "half-block"
                                        : "block";
}

std::vector<Unit> make_units(const Decoder& m, Granularity g) {
  std::vector<Unit> units;
  for (const LayerId& id : m.linear_ids()) {
    const bool attn = id.proj == model::Proj::Q || id.proj == model::Proj::K ||
                      id.proj == model::Proj::V || id.proj == model::Proj::O;
    std::string name = id.name();
    if (g == Granularity::BLOCK) name = fmt::format("model.layers.{}", id.block);
    if (g == Granularity::HALF_BLOCK)
      name = fmt::format("model.layers.{}.{}", id.block, attn ? "self_attn" : "mlp");
    if (units.empty() || units.back().id != name) units.push_back({name, id.block, {}});
    units.back().layers.push_back(id);
  }
  return units;
}

model::MemoryNeeds memory_needs(model::MemoryNeeds n, const model::ModelConfig& c, const Options& o,
                                int64_t N, int64_t T, c10::ScalarType dtype) {
  const uint64_t e = c10::elementSize(dtype), state = uint64_t(N * T * c.hidden_size) * e;
  uint64_t largest_layer = 0, largest_block = 0;
  for (size_t b = 0; b < n.blocks.size(); ++b) {
    for (model::Proj p : model::kAllProjs) {
      const auto shape = model::linear_shape(c, p);
      n.blocks[b] += o.base.bytes(shape[0], shape[1]);
      largest_layer = std::max<uint64_t>(largest_layer, uint64_t(shape[0] * shape[1]));
    }
    largest_block = std::max(largest_block, n.blocks[b]);
  }
  const uint64_t batch_state = uint64_t(o.batch * T * c.hidden_size) * e;
  const uint64_t group = units_per_group(c, o.batch, T, dtype, 512.0 * (1 << 20));
  // Quantizing the layers comes before the passes: the larger of the two phases counts.
  // A layer in fp32 and its temporaries; HQQ's steps (_fz formats) hold about ten such copies.
  const uint64_t quantize = (o.base.float_zero ? 10 : 4) * largest_layer * 4;
  const uint64_t passes = 2 * state +                // reference and baseline final states
                          2 * group * batch_state +  // unit states and their normed copies
                          model::forward_bytes(c, o.batch, T, dtype) +
                          model::head_bytes(c, o.chunk, 2 * e) +
                          largest_block;                    // one block's originals while quantized
  n.working = std::max(quantize, passes) + (256ULL << 20);  // allocator rounding, cuBLAS
  n.caches = o.cached ? state * n.blocks.size() : 0;
  return n;
}

Result run_profile(Decoder& m, const at::Tensor& ids, const quant::QuantizedLayers& quantized,
                   const Options& o) {
  check(ids.dim() == 2 && ids.size(1) >= 2 && o.batch >= 1 && o.chunk >= 1,
        "run_profile: bad calibration windows or options");
  at::InferenceMode guard;
  PhaseTimer timer(m.device(), {"quantize + proxies", "reference and baseline passes",
                                "unit blocks", "unit heads + KL"});
  timer.start();
  const std::vector<LayerId> all = m.linear_ids();
  States st;
  st.model = &m;
  for (const LayerId& id : all) {
    const QLinear& l = m.linear(id);
    if (l.is_packed())
      throw ConfigError(
          fmt::format("profile: layer {} is already quantized ({}); profile the "
                      "unquantized checkpoint",
                      id.name(), l.format_name()));
    st.dense.emplace(id.name(), l);  // views into fused buffers stay valid: shared storage
  }
  for (const LayerId& id : all) {
    const QLinear& d = st.dense.at(id.name());
    const auto ql = quantized.find(id.name());
    if (ql == quantized.end())
      throw InternalError(fmt::format("run_profile: layer {} was not quantized", id.name()));
    // No workspace: only the proxies and input-scaled layers run these layers' forward.
    auto store = [&](const at::Tensor& t) { return m.to_storage(id.block, t); };
    QLinear q(ql->second.packed.map(store), d.bias(), m.dtype(), nullptr);
    const at::Tensor& s =
        ql->second.input_scale.defined() ? ql->second.input_scale : d.input_scale();
    if (s.defined()) q.set_input_scale(store(s.to(m.dtype())));
    st.quantized.emplace(id.name(), std::move(q));
  }
  bool streamed = false, scaled = false;
  for (const LayerId& id : all) {
    streamed = streamed || m.streamed(id.block);
    scaled = scaled || st.quantized.at(id.name()).input_scale().defined();
  }
  // Both replace whole layers of the model, which a streamed block's device copy does not see.
  if (streamed && (o.proxies || scaled))
    throw UnsupportedError(fmt::format(
        "profile: {} needs every block on the device, and the budget streams some (give a larger "
        "--max-gpu-memory, or lower --batch or --samples)",
        o.proxies ? "--proxies" : "a method with input scales (awq)"));
  const LayerProxies proxies =
      o.proxies ? layer_proxies(m, ids, st.dense, st.quantized, o.batch, o.chunk) : LayerProxies{};
  timer.lap(0);
  const bool restore = o.mode == Mode::RESTORE_ONE;
  // Reference pass (dense): final hidden states, and block inputs for quantize-one.
  std::vector<at::Tensor> inputs;
  at::Tensor final_ref, final_q;
  cache_pass(m, st, false, ids, o.batch, o.cached && !restore ? &inputs : nullptr, o.caches_on_host,
             final_ref);
  // Fully quantized pass: the baseline, and block inputs for restore-one.
  cache_pass(m, st, true, ids, o.batch, o.cached && restore ? &inputs : nullptr, o.caches_on_host,
             final_q);
  Result result;
  {
    std::vector<Scores> s(1);
    for (const auto [w, B] : batches(ids.size(0), o.batch))
      score(m, {final_q.narrow(0, w, B)}, final_ref.narrow(0, w, B), ids.narrow(0, w, B), o.chunk,
            s);
    result.baseline = s[0].stats();
    if (!std::isfinite(result.baseline.mean))
      throw IoError(
          "profile: the KL of the fully quantized model is not finite (activations "
          "overflowed the compute dtype: try --dtype bf16 or fp32)");
  }
  timer.lap(1);
  std::vector<Unit> units;  // the shard's units, in model order
  const std::vector<Unit> all_units = make_units(m, o.granularity);
  for (size_t k = 0; k < all_units.size(); ++k)
    if (o.shard.owns(k)) units.push_back(all_units[k]);
  result.units_total = all_units.size();
  Progress progress(fmt::format("profile {}", mode_name(o.mode)),
                    static_cast<int64_t>(units.size()), "units");
  const size_t group = o.group ? o.group : group_size(m, o.batch, ids.size(1));
  for (size_t g0 = 0; g0 < units.size(); g0 += group) {
    const size_t G = std::min(group, units.size() - g0);
    const std::vector<Unit> members(units.begin() + static_cast<std::ptrdiff_t>(g0),
                                    units.begin() + static_cast<std::ptrdiff_t>(g0 + G));
    std::vector<Scores> s(G);
    for (const auto [w, B] : batches(ids.size(0), o.batch)) {
      const std::vector<at::Tensor> hs = run_group(m, st, members, inputs, ids, w, B, o);
      timer.lap(2);
      score(m, hs, final_ref.narrow(0, w, B), ids.narrow(0, w, B), o.chunk, s);
      timer.lap(3);
    }
    for (size_t k = 0; k < G; ++k) {
      const Unit& u = units[g0 + k];
      UnitResult r{u, 0, 0, 0, s[k].stats()};
      // Weights are checked at load: a non-finite KL means activations overflowed. An error, so
      // a profile never records null sensitivities.
      if (!std::isfinite(r.kl.mean))
        throw IoError(fmt::format(
            "profile: unit {}: the KL is not finite (its activations overflowed the compute "
            "dtype; fp16 overflows where bf16 does not: try --dtype bf16 or fp32)",
            u.id));
      for (const LayerId& id : u.layers) {
        const QLinear& d = st.dense.at(id.name());
        r.params += static_cast<uint64_t>(d.in_features() * d.out_features());
        // The format's stored bytes, not the held weight's: a dense base (bf16, fp16) is held in
        // the compute dtype, 4 bytes per weight on an fp32 run.
        r.bytes_base += o.base.bytes(d.out_features(), d.in_features());
      }
      r.bytes_bf16 = 2 * r.params;
      result.units.push_back(std::move(r));
    }
    progress.advance(static_cast<int64_t>(G));
  }
  timer.report();
  st.set(m, all, false);
  if (o.proxies)
    for (UnitResult& r : result.units) r.proxies = unit_proxies(proxies, r.unit.layers);
  return result;
}

nlohmann::json to_json(const Result& r, const Options& o, const std::string& method) {
  nlohmann::json units = nlohmann::json::array();
  for (const UnitResult& u : r.units) {
    nlohmann::json j = {{"id", u.unit.id},
                        {"params", u.params},
                        {"bytes_base", u.bytes_base},
                        {"bytes_bf16", u.bytes_bf16},
                        {"kl_mean", u.kl.mean},
                        {"kl_stderr", u.kl.stderr_},
                        {"top1_agree", u.kl.top1}};
    if (o.mode == Mode::RESTORE_ONE) j["kl_gain"] = r.baseline.mean - u.kl.mean;
    if (u.proxies) add_proxy_keys(j, *u.proxies);
    units.push_back(j);
  }
  nlohmann::json out = {{"units", units},
                        {"baseline_kl", r.baseline.mean},
                        {"baseline_kl_stderr", r.baseline.stderr_},
                        {"baseline_top1_agree", r.baseline.top1},
                        {"mode", mode_name(o.mode)},
                        {"granularity", granularity_name(o.granularity)},
                        {"base", o.base.name()},
                        {"method", method}};
  if (!o.shard.whole()) {
    // The correlations need every unit: merge_shards computes them.
    out["shard"] = {{"index", o.shard.index}, {"count", o.shard.count}, {"units", r.units_total}};
    if (o.proxies) out["proxies"] = {{"fisher_batch", o.batch}};
    return out;
  }
  if (o.proxies) {
    const bool restore = o.mode == Mode::RESTORE_ONE;
    std::vector<ProxyStats> p;
    std::vector<double> sensitivity;
    for (const UnitResult& u : r.units) {
      p.push_back(u.proxies.value_or(ProxyStats{}));
      sensitivity.push_back(restore ? r.baseline.mean - u.kl.mean : u.kl.mean);
    }
    out["proxies"] = proxies_json(p, sensitivity, restore ? "kl_gain" : "kl_mean", o.batch);
  }
  return out;
}

}  // namespace kldq::profile
