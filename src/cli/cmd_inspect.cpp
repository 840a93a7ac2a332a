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

int run_inspect(const InspectOptions& o) {
  const std::filesystem::path dir(o.model);
  const model::ModelConfig c = model::load_config(dir / "config.json");
  const io::Checkpoint ck = model::open_checkpoint(dir);
  // Header-only validation through the same checks the loader applies (shapes, dtypes, leftovers).
  model::WeightStore ws(ck, c10::kCPU, c10::kFloat);
  const model::LayerFormats formats = model::read_layer_formats(ck, c);
  std::vector<LayerRow> rows;
  uint64_t linear_bytes = 0, other_bytes = 0;
  int64_t linear_params = 0;
  for (const auto& slot :
       model::expected_tensors(c, formats, model::read_input_scaled(ck, formats))) {
    ws.take_raw(slot.name, slot.shape, slot.dtype);
    const io::TensorInfo& info = ck.info(slot.name);
    const bool weight = slot.role == model::TensorRole::LINEAR_WEIGHT ||
                        slot.role == model::TensorRole::LINEAR_PART;
    if (weight && (rows.empty() || rows.back().id != slot.layer->name())) {
      const auto f = formats.find(slot.layer->name());
      const auto shape = model::linear_shape(c, slot.layer->proj);
      rows.push_back(
          {slot.layer->name(), shape, f == formats.end() ? info.dtype : f->second.name(), 0, 0});
      linear_params += shape[0] * shape[1];
    }
    if (weight) {
      rows.back().weight_bytes += info.nbytes();
      linear_bytes += info.nbytes();
    } else if (slot.role == model::TensorRole::LINEAR_BIAS) {
      rows.back().bias_bytes = info.nbytes();
      linear_bytes += info.nbytes();
    } else {
      other_bytes += info.nbytes();
    }
  }
  const int64_t params = c.num_parameters();
  uint64_t linear_weight_bytes = 0;
  for (const auto& r : rows) linear_weight_bytes += r.weight_bytes;
  const double model_bpw = 8.0 * static_cast<double>(linear_weight_bytes) / linear_params;
  ws.accept_derived(c);
  ws.finish();

  if (o.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& r : rows)
      layers.push_back({{"id", r.id},
                        {"shape", r.shape},
                        {"format", r.dtype},
                        {"weight_bytes", r.weight_bytes},
                        {"bias_bytes", r.bias_bytes},
                        {"bits_per_weight", 8.0 * r.weight_bytes / (r.shape[0] * r.shape[1])}});
    nlohmann::json j = {{"model", dir.string()},
                        {"architecture", model::arch_class_name(c.arch)},
                        {"config", c.to_json()},
                        {"parameters", params},
                        {"linear_layers", layers},
                        {"linear_bytes", linear_bytes},
                        {"other_bytes", other_bytes},
                        {"tensor_bytes", linear_bytes + other_bytes},
                        {"linear_bits_per_weight", model_bpw},
                        {"file_bytes", ck.file_bytes()}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("model        {}\n", dir.string());
  std::cout << fmt::format(
      "architecture {} ({}): {} blocks, hidden {}, heads {} / kv {} (head_dim {}), ffn {}, vocab "
      "{}, "
      "{} embeddings, rope theta {:g}\n",
      model::arch_class_name(c.arch), c.model_type, c.num_layers, c.hidden_size, c.num_heads,
      c.num_kv_heads, c.head_dim, c.intermediate_size, c.vocab_size,
      c.tie_word_embeddings ? "tied" : "separate", c.rope_theta);
  std::cout << fmt::format("parameters   {}\n\n", params);
  std::cout << fmt::format("{:<40} {:>13} {:>14} {:>14} {:>8}\n", "layer", "shape", "format",
                           "bytes", "bits/w");
  for (const auto& r : rows)
    std::cout << fmt::format("{:<40} {:>13} {:>14} {:>14} {:>8.3f}\n", r.id,
                             fmt::format("{}x{}", r.shape[0], r.shape[1]), r.dtype,
                             r.weight_bytes + r.bias_bytes,
                             8.0 * r.weight_bytes / (r.shape[0] * r.shape[1]));
  std::cout << fmt::format("\nlinear layers {:>5} {:>34} bytes ({:.4f} bits per weight)\n",
                           rows.size(), linear_bytes, model_bpw);
  std::cout << fmt::format("other tensors       {:>34} bytes (embeddings, norms, head)\n",
                           other_bytes);
  std::cout << fmt::format("all tensors         {:>34} bytes ({:.3f} GiB)\n",
                           linear_bytes + other_bytes,
                           (linear_bytes + other_bytes) / double(1ull << 30));
  std::cout << fmt::format("files on disk       {:>34} bytes\n", ck.file_bytes());
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
