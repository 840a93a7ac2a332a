// Sensitivity profiling (docs/PROTOCOLS.md, "Sensitivity profile"): for
// every unit (a linear layer, a block's attention or MLP, or a whole block), the KL divergence of
// the model's next-token distributions from the reference's on a calibration set, with only that
// unit quantized (quantize-one) or only that unit restored in the fully quantized model
// (restore-one, the reference project's measure).
//
// The cached path runs the calibration set through the model once per state (reference; fully
// quantized) and keeps every block's input hidden states; a unit in block b then re-runs only
// blocks b..L-1 from the cached input, and reference logits are recomputed from the cached final
// hidden states a chunk at a time, shared by a group of units. A group's units run block-major
// (block b once for every unit that has reached it), so a streamed block is brought to the device
// once per group and batch; each unit still sees exactly the block sequence it would alone.
// Quantized weights are written into the dense (fused) weights in place while a block runs and
// undone before the next. The naive path (a full forward per unit) exists to test it.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "kldq/core/shard.hpp"
#include "kldq/core/vocabulary.hpp"
#include "kldq/formats/format.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/profile/proxies.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::profile {

enum class Mode { QUANTIZE_ONE, RESTORE_ONE };
inline constexpr Vocabulary<Mode, 2> kModes{
    "mode", {{{Mode::QUANTIZE_ONE, "quantize-one"}, {Mode::RESTORE_ONE, "restore-one"}}}};
enum class Granularity { LINEAR, HALF_BLOCK, BLOCK };
inline constexpr Vocabulary<Granularity, 3> kGranularities{
    "granularity",
    {{{Granularity::LINEAR, "linear"},
      {Granularity::HALF_BLOCK, "half-block"},
      {Granularity::BLOCK, "block"}}}};
// A mode's and a granularity's names (kModes, kGranularities).
const char* mode_name(Mode m);
const char* granularity_name(Granularity g);

struct Unit {
  std::string
      id;  // HF name: "model.layers.3.mlp.down_proj", "model.layers.3.mlp", "model.layers.3"
  int block = 0;
  std::vector<model::LayerId> layers;
};
// The units of `model` in model order.
std::vector<Unit> make_units(const model::Decoder& model, Granularity g);

struct Options {
  Mode mode = Mode::QUANTIZE_ONE;
  Granularity granularity = Granularity::LINEAR;
  formats::FormatSpec base;
  int64_t batch = 8;            // calibration windows per forward
  int64_t chunk = 1024;         // positions per LM head + KL
  bool cached = true;           // false: a full forward per unit (the test oracle)
  bool proxies = false;         // also the sensitivity proxies (proxies.hpp)
  bool caches_on_host = false;  // cached block inputs in host memory (model::MemoryPlan)
  size_t group = 0;             // units per pass (0: as group_size() chooses)
  Shard shard;                  // only the units with index % count == index (merge_shards)
};

// Units run together per batch of windows: their hidden states ([batch, T, H] each) are held
// together, within `bytes` and at most 32 (each pass brings a streamed block in once).
size_t group_size(const model::Decoder& m, int64_t batch, int64_t T,
                  double bytes = 512.0 * (1 << 20));

struct KlStats {
  double mean = 0, stderr_ = 0, top1 = 0;
};

struct UnitResult {
  Unit unit;
  uint64_t params = 0, bytes_base = 0, bytes_bf16 = 0;
  KlStats kl;  // quantize-one: KL with the unit quantized; restore-one: with it restored
  std::optional<ProxyStats> proxies = std::nullopt;  // with Options::proxies
};

struct Result {
  std::vector<UnitResult> units;
  KlStats baseline;        // the fully quantized model
  size_t units_total = 0;  // units of the whole profile (more than units.size() in a shard)
};

// What a profile of N windows of T tokens needs on the device, given the checkpoint's weights
// (model::Decoder::weight_needs): each block's weights plus its layers' quantized states, the
// reference and baseline final states, a group's unit states, one block's forward, the LM head
// scoring and one block's originals set aside; the cached block inputs as optional caches.
model::MemoryNeeds memory_needs(model::MemoryNeeds weights, const model::ModelConfig& c,
                                const Options& o, int64_t N, int64_t T, c10::ScalarType dtype);

// `model` must be dense (unquantized); it is returned dense (with its fused groups split when
// proxies were computed). ids: [N, T] int64 calibration windows; `quantized`: every linear
// layer's quantized form at the base format (quant::quantize_layers with the profile's method).
Result run_profile(model::Decoder& model, const at::Tensor& ids,
                   const quant::QuantizedLayers& quantized, const Options& options);
// The same profile computed by several copies of the model (one per device, each loaded as
// above): each runs the reference and fully quantized passes, then takes groups of units one at a
// time until none is left; the first also computes the proxies. Every unit's result is the one
// run_profile on its device gives (a unit's KL does not depend on the units it is grouped with),
// so on devices of one type the profile is bit-identical to a single device's. An IoError when
// the devices' baselines differ (devices of different types).
Result run_profile(const std::vector<model::Decoder*>& models, const at::Tensor& ids,
                   const quant::QuantizedLayers& quantized, const Options& options);

}  // namespace kldq::profile
