// `kldq inspect MODEL [--json]`: architecture, parameter count, every linear layer's shape, dtype
// and exact bytes, and totals. Reads only the safetensors headers (no weights are loaded), but
// checks the checkpoint against config.json exactly as loading would.
#include <fmt/format.h>

#include <iostream>

#include "common.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/foreign.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/model/weight_store.hpp"

namespace kldq::cli {
namespace {

struct InspectOptions {
  std::string model;
  bool json = false;
};

struct LayerRow {
  std::string id;
  std::vector<int64_t> shape;
  std::string dtype;
  uint64_t weight_bytes = 0;
  uint64_t bias_bytes = 0;
};

// Every linear layer's row and the byte totals, checked header-only as the loader checks them.
struct Inventory {
  std::vector<LayerRow> rows;
  uint64_t linear_bytes = 0, other_bytes = 0;
  int64_t linear_params = 0;
  double bits_per_weight() const {  // of the linear layers' weights, biases excluded
    uint64_t weight_bytes = 0;
    for (const auto& r : rows) weight_bytes += r.weight_bytes;
    return 8.0 * static_cast<double>(weight_bytes) / static_cast<double>(linear_params);
  }
};

Inventory inventory_of(const model::ModelConfig& c, const io::Checkpoint& ck) {
  // Header-only validation through the same checks the loader applies (shapes, dtypes, leftovers).
  model::WeightStore ws(ck, c10::kCPU, c10::kFloat);
  const model::LayerFormats formats = model::read_layer_formats(ck, c);
  Inventory inv;
  for (const auto& slot :
       model::expected_tensors(c, formats, model::read_input_scaled(ck, formats))) {
    ws.take_raw(slot.name, slot.shape, slot.dtype);
    const io::TensorInfo& info = ck.info(slot.name);
    const bool weight = slot.role == model::TensorRole::LINEAR_WEIGHT ||
                        slot.role == model::TensorRole::LINEAR_PART;
    if (weight && (inv.rows.empty() || inv.rows.back().id != slot.layer->name())) {
      const auto f = formats.find(slot.layer->name());
      const auto shape = model::linear_shape(c, slot.layer->proj);
      inv.rows.push_back(
          {slot.layer->name(), shape, f == formats.end() ? info.dtype : f->second.name(), 0, 0});
      inv.linear_params += shape[0] * shape[1];
    }
    if (weight) {
      inv.rows.back().weight_bytes += info.nbytes();
      inv.linear_bytes += info.nbytes();
    } else if (slot.role == model::TensorRole::LINEAR_BIAS) {
      inv.rows.back().bias_bytes = info.nbytes();
      inv.linear_bytes += info.nbytes();
    } else {
      inv.other_bytes += info.nbytes();
    }
  }
  ws.accept_derived(c);
  ws.finish();
  return inv;
}

nlohmann::json inventory_json(const std::string& dir, const model::ModelConfig& c,
                              const io::Checkpoint& ck, const Inventory& inv) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& r : inv.rows)
    layers.push_back({{"id", r.id},
                      {"shape", r.shape},
                      {"format", r.dtype},
                      {"weight_bytes", r.weight_bytes},
                      {"bias_bytes", r.bias_bytes},
                      {"bits_per_weight", 8.0 * r.weight_bytes / (r.shape[0] * r.shape[1])}});
  return {{"model", dir},
          {"architecture", model::arch_class_name(c.arch)},
          {"config", c.to_json()},
          {"parameters", c.num_parameters()},
          {"linear_layers", layers},
          {"linear_bytes", inv.linear_bytes},
          {"other_bytes", inv.other_bytes},
          {"tensor_bytes", inv.linear_bytes + inv.other_bytes},
          {"linear_bits_per_weight", inv.bits_per_weight()},
          {"file_bytes", ck.file_bytes()}};
}

std::string inventory_text(const std::string& dir, const model::ModelConfig& c,
                           const io::Checkpoint& ck, const Inventory& inv) {
  std::string t = fmt::format("model        {}\n", dir);
  t += fmt::format(
      "architecture {} ({}): {} blocks, hidden {}, heads {} / kv {} (head_dim {}), ffn {}, vocab "
      "{}, "
      "{} embeddings, rope theta {:g}\n",
      model::arch_class_name(c.arch), c.model_type, c.num_layers, c.hidden_size, c.num_heads,
      c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size,
      c.tie_word_embeddings ? "tied" : "separate", c.rope_theta);
  t += fmt::format("parameters   {}\n\n", c.num_parameters());
  t += fmt::format("{:<40} {:>13} {:>14} {:>14} {:>8}\n", "layer", "shape", "format", "bytes",
                   "bits/w");
  for (const auto& r : inv.rows)
    t += fmt::format("{:<40} {:>13} {:>14} {:>14} {:>8.3f}\n", r.id,
                     fmt::format("{}x{}", r.shape[0], r.shape[1]), r.dtype,
                     r.weight_bytes + r.bias_bytes,
                     8.0 * r.weight_bytes / (r.shape[0] * r.shape[1]));
  const uint64_t all = inv.linear_bytes + inv.other_bytes;
  t += fmt::format("\nlinear layers {:>5} {:>34} bytes ({:.4f} bits per weight)\n", inv.rows.size(),
                   inv.linear_bytes, inv.bits_per_weight());
  t += fmt::format("other tensors       {:>34} bytes (embeddings, norms, head)\n", inv.other_bytes);
  t +=
      fmt::format("all tensors         {:>34} bytes ({:.3f} GiB)\n", all, all / double(1ull << 30));
  t += fmt::format("files on disk       {:>34} bytes\n", ck.file_bytes());
  return t;
}

int run_inspect(const InspectOptions& o) {
  const std::filesystem::path dir(o.model);
  const model::ModelConfig c = model::load_config(dir / "config.json");
  const io::Checkpoint ck = model::open_checkpoint(dir);
  const Inventory inv = inventory_of(c, ck);
  if (o.json)
    std::cout << inventory_json(dir.string(), c, ck, inv).dump(2) << "\n";
  else
    std::cout << inventory_text(dir.string(), c, ck, inv);
  return 0;
}

}  // namespace

void register_inspect(CLI::App& app, Action& action) {
  auto opts = std::make_shared<InspectOptions>();
  auto* sub = app.add_subcommand("inspect",
                                 "architecture, layers, formats and exact bytes of a checkpoint");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  sub->add_flag("--json", opts->json, "machine-readable output on stdout");
  sub->callback([&action, opts] { action = [opts] { return run_inspect(*opts); }; });
}

}  // namespace kldq::cli
