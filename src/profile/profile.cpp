// Sensitivity profile: unit list, memory needs, the passes of one or several devices (groups of
// units handed out as devices finish them), profile.json.
#include "kldq/profile/profile.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include <c10/core/DeviceGuard.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/core/workers.hpp"
#include "kldq/profile/record.hpp"
#include "passes.hpp"

namespace kldq::profile {
namespace {

using namespace detail;  // NOLINT: the passes of this module
// Units whose states ([batch, T, H] each) fit in `bytes`, at least 1 and at most 32.
size_t units_per_group(const model::ModelConfig& c, int64_t batch, int64_t T, c10::ScalarType dtype,
                       double bytes) {
  const double per_unit = double(batch * T * c.hidden_size) * double(c10::elementSize(dtype));
  return static_cast<size_t>(std::clamp(bytes / per_unit, 1.0, 32.0));
}

// The layers' two states of model `m`: its own dense layers, and `quantized` held as `m` holds
// its weights (on the device, or in host memory for a streamed block).
void make_states(Decoder& m, const quant::QuantizedLayers& quantized, States& st) {
  st.model = &m;
  for (const LayerId& id : m.linear_ids()) {
    const QLinear& l = m.linear(id);
    if (l.is_packed())
      throw ConfigError(
          fmt::format("profile: layer {} is already quantized ({}); profile the "
                      "unquantized checkpoint",
                      id.name(), l.format_name()));
    st.dense.emplace(id, l);  // views into fused buffers stay valid: shared storage
  }
  for (const LayerId& id : m.linear_ids()) {
    const QLinear& d = st.dense.at(id);
    const auto ql = quantized.find(id);
    if (ql == quantized.end())
      throw InternalError(fmt::format("run_profile: layer {} was not quantized", id.name()));
    // No workspace: only the proxies and input-scaled layers run these layers' forward.
    auto store = [&](const at::Tensor& t) { return m.to_storage(id.block, t); };
    QLinear q(ql->second.packed.map(store), d.bias(), m.dtype(), nullptr);
    const at::Tensor& s =
        ql->second.input_scale.defined() ? ql->second.input_scale : d.input_scale();
    if (s.defined()) q.set_input_scale(store(s.to(m.dtype())));
    st.quantized.emplace(id, std::move(q));
  }
}

// Both replace whole layers of the model, which a streamed block's device copy does not see.
void check_streaming(const Decoder& m, const States& st, const Options& o) {
  bool streamed = false, scaled = false;
  for (const LayerId& id : m.linear_ids()) {
    streamed = streamed || m.streamed(id.block);
    scaled = scaled || st.quantized.at(id).input_scale().defined();
  }
  if (streamed && (o.proxies || scaled))
    throw UnsupportedError(fmt::format(
        "profile: {} needs every block on the device, and the budget streams some (give a larger "
        "--max-gpu-memory, or lower --batch or --samples)",
        o.proxies ? "--proxies" : "a method with input scales (awq)"));
}

// One model's profile work: its layer states, the reference and fully quantized passes (with the
// cached block inputs), then any group of units. The model is returned dense when it ends.
class Session {
 public:
  Session(Decoder& m, const at::Tensor& ids, const quant::QuantizedLayers& quantized,
          const Options& o, bool with_proxies)
      : m_(m),
        ids_(ids),
        o_(o),
        timer_(m.device(), {"quantize + proxies", "reference and baseline passes", "unit blocks",
                            "unit heads + KL"}) {
    timer_.start();
    make_states(m, quantized, st_);
    check_streaming(m, st_, o);
    if (o.proxies && with_proxies)
      proxies_ = layer_proxies(m, ids, st_.dense, st_.quantized, o.batch, o.chunk);
    // The proxies leave the grouped projections unfused, which rounds differently from the
    // fused GEMMs: the other workers' models are put in the same state.
    if (o.proxies && !with_proxies)
      for (const LayerId& id : m.linear_ids()) m.set_linear(id, st_.dense.at(id));
    timer_.lap(0);
    const bool restore = o.mode == Mode::RESTORE_ONE;
    // Reference pass (dense): final hidden states, and block inputs for quantize-one.
    cache_pass(m, st_, false, ids, o.batch, o.cached && !restore ? &inputs_ : nullptr,
               o.caches_on_host, final_ref_);
    // Fully quantized pass: the baseline, and block inputs for restore-one.
    at::Tensor final_q;
    cache_pass(m, st_, true, ids, o.batch, o.cached && restore ? &inputs_ : nullptr,
               o.caches_on_host, final_q);
    std::vector<Scores> s(1);
    for (const auto [w, B] : batches(ids.size(0), o.batch))
      score(m, {final_q.narrow(0, w, B)}, final_ref_.narrow(0, w, B), ids.narrow(0, w, B), o.chunk,
            s);
    baseline_ = s[0].stats();
    if (!std::isfinite(baseline_.mean))
      throw IoError(
          "profile: the KL of the fully quantized model is not finite (activations "
          "overflowed the compute dtype: try --dtype bf16 or fp32)");
    timer_.lap(1);
  }
  ~Session() { timer_.report(); }
  const KlStats& baseline() const { return baseline_; }
  const LayerProxies& proxies() const { return proxies_; }

  // The KL of each unit of `group` (one pass per batch of windows for all of them).
  std::vector<KlStats> run(const std::vector<Unit>& group) {
    std::vector<Scores> s(group.size());
    for (const auto [w, B] : batches(ids_.size(0), o_.batch)) {
      const std::vector<at::Tensor> hs = run_group(m_, st_, group, inputs_, ids_, w, B, o_);
      timer_.lap(2);
      score(m_, hs, final_ref_.narrow(0, w, B), ids_.narrow(0, w, B), o_.chunk, s);
      timer_.lap(3);
    }
    std::vector<KlStats> out;
    for (size_t k = 0; k < group.size(); ++k) {
      out.push_back(s[k].stats());
      // Weights are checked at load: a non-finite KL means activations overflowed. An error, so
      // a profile never records null sensitivities.
      if (!std::isfinite(out.back().mean))
        throw IoError(fmt::format(
            "profile: unit {}: the KL is not finite (its activations overflowed the compute "
            "dtype; fp16 overflows where bf16 does not: try --dtype bf16 or fp32)",
            group[k].id));
    }
    return out;
  }

 private:
  Decoder& m_;
  const at::Tensor& ids_;
  const Options& o_;
  PhaseTimer timer_;
  States st_;
  LayerProxies proxies_;
  std::vector<at::Tensor> inputs_;
  at::Tensor final_ref_;
  KlStats baseline_;
};

// A unit's result: its KL and the sizes of its layers.
UnitResult unit_result(const Decoder& m, const Unit& u, const KlStats& kl, const Options& o) {
  UnitResult r{u, 0, 0, 0, kl};
  for (const LayerId& id : u.layers) {
    const QLinear& d = m.linear(id);
    r.params += static_cast<uint64_t>(d.in_features() * d.out_features());
    // The format's stored bytes, not the held weight's: a dense base (bf16, fp16) is held in
    // the compute dtype, 4 bytes per weight on an fp32 run.
    r.bytes_base += o.base.bytes(d.out_features(), d.in_features());
  }
  r.bytes_bf16 = 2 * r.params;
  return r;
}

}  // namespace

size_t group_size(const Decoder& m, int64_t batch, int64_t T, double bytes) {
  return units_per_group(m.config(), batch, T, m.dtype(), bytes);
}

const char* mode_name(Mode m) {
  return kModes.name(m);
}

const char* granularity_name(Granularity g) {
  return kGranularities.name(g);
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
  return run_profile(std::vector<Decoder*>{&m}, ids, quantized, o);
}

Result run_profile(const std::vector<Decoder*>& models, const at::Tensor& ids,
                   const quant::QuantizedLayers& quantized, const Options& o) {
  check(!models.empty() && ids.dim() == 2 && ids.size(1) >= 2 && o.batch >= 1 && o.chunk >= 1,
        "run_profile: no model, or bad calibration windows or options");
  Decoder& first = *models[0];
  const std::vector<Unit> all_units = make_units(first, o.granularity);
  std::vector<Unit> units;  // the shard's, in model order
  for (size_t k = 0; k < all_units.size(); ++k)
    if (o.shard.owns(k)) units.push_back(all_units[k]);
  const size_t group = o.group ? o.group : group_size(first, o.batch, ids.size(1));
  std::vector<std::vector<Unit>> groups;
  for (size_t g0 = 0; g0 < units.size(); g0 += group)
    groups.emplace_back(units.begin() + std::ptrdiff_t(g0),
                        units.begin() + std::ptrdiff_t(std::min(units.size(), g0 + group)));

  Progress progress(fmt::format("profile {}", mode_name(o.mode)), int64_t(units.size()), "units");
  std::mutex progress_mutex;
  std::atomic<size_t> next{0};
  std::vector<std::vector<KlStats>> kl(groups.size());
  std::vector<KlStats> baselines(models.size());
  LayerProxies proxies;
  // Worker w: its model's passes, then groups taken one at a time until none is left (so fast
  // and slow devices, and early and late groups, balance). The first worker computes the proxies.
  auto work = [&](size_t w) {
    const c10::DeviceGuard device(models[w]->device());
    at::InferenceMode guard;
    try {
      Session session(*models[w], ids, quantized, o, w == 0);
      baselines[w] = session.baseline();
      if (w == 0) proxies = session.proxies();
      for (size_t g; (g = next.fetch_add(1)) < groups.size();) {
        kl[g] = session.run(groups[g]);
        const std::lock_guard<std::mutex> lock(progress_mutex);
        progress.advance(int64_t(groups[g].size()));
      }
    } catch (...) {
      next = groups.size();  // the other workers stop after their current group
      throw;
    }
  };
  run_workers(models.size(), work);
  for (const KlStats& b : baselines)
    if (b.mean != baselines[0].mean)
      throw IoError(fmt::format(
          "profile: the devices disagree on the fully quantized model's KL ({} vs {}); they must "
          "be of one type to give identical results",
          baselines[0].mean, b.mean));
  Result result;
  result.baseline = baselines[0];
  result.units_total = all_units.size();
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t k = 0; k < groups[g].size(); ++k)
      result.units.push_back(unit_result(first, groups[g][k], kl[g][k], o));
  if (o.proxies)
    for (UnitResult& r : result.units) r.proxies = unit_proxies(proxies, r.unit.layers);
  return result;
}

}  // namespace kldq::profile
