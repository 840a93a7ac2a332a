// Random-weight checkpoints of Qwen2.5 shapes, streamed tensor by tensor to safetensors.
#include "kldq/model/synth.hpp"

#include "kldq/io/checkpoint.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kldq/core/context.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::model {
namespace fs = std::filesystem;
namespace {

struct Shape {
  const char* name;
  int64_t hidden, intermediate, layers, heads, kv_heads, vocab, max_pos;
  bool tied;
};

// Dimensions of the published Qwen2.5 configs (head_dim = hidden / heads, rope_theta 1e6).
constexpr Shape kShapes[] = {
    {"tiny", 64, 172, 2, 4, 2, 512, 2048, true},
    {"qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, 32768, true},
    {"qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 151936, 32768, true},
    {"qwen2.5-3b", 2048, 11008, 36, 16, 2, 151936, 32768, true},
    {"qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, 32768, false},
    {"qwen2.5-14b", 5120, 13824, 48, 40, 8, 152064, 32768, false},
};

}  // namespace

std::vector<std::string> synth_shape_names() {
  std::vector<std::string> names;
  for (const auto& s : kShapes) names.emplace_back(s.name);
  return names;
}

ModelConfig synth_config(std::string_view shape) {
  for (const auto& s : kShapes) {
    if (shape != s.name) continue;
    nlohmann::json j = {{"model_type", "qwen2"},
                        {"hidden_size", s.hidden},
                        {"intermediate_size", s.intermediate},
                        {"num_hidden_layers", s.layers},
                        {"num_attention_heads", s.heads},
                        {"num_key_value_heads", s.kv_heads},
                        {"vocab_size", s.vocab},
                        {"max_position_embeddings", s.max_pos},
                        {"rms_norm_eps", 1e-6},
                        {"rope_theta", 1000000.0},
                        {"tie_word_embeddings", s.tied}};
    return parse_config(j, fmt::format("synth shape '{}'", s.name));
  }
  throw ConfigError(fmt::format("--shape: unknown shape '{}' (one of: {})", shape,
                                fmt::join(synth_shape_names(), ", ")));
}

void synth_checkpoint(const ModelConfig& config, const fs::path& out_arg,
                      const SynthOptions& options) {
  const fs::path out = directory_output(out_arg, "-o", options.force, {});
  ModelConfig c = config;
  c.torch_dtype = options.dtype == c10::kBFloat16 ? "bfloat16"
                  : options.dtype == c10::kHalf   ? "float16"
                                                  : "float32";
  TempOutput tmp_dir(out, TempOutput::Kind::DIRECTORY);
  const fs::path tmp = tmp_dir.path();
  {
    io::write_file_atomic(tmp / "config.json", c.to_json().dump(2) + "\n");
    const auto slots = expected_tensors(c);
    std::vector<io::TensorSpec> specs;
    for (const auto& s : slots) specs.push_back({s.name, options.dtype, s.shape});
    io::SafetensorsWriter writer(
        tmp / "model.safetensors", specs,
        {{"format", "pt"}, {"kldq_synth_seed", std::to_string(options.seed)}});
    at::manual_seed(options.seed);
    auto opts = at::TensorOptions().dtype(options.dtype).device(options.device);
    for (const auto& s : slots) {
      at::Tensor t = at::empty(s.shape, opts);
      t.normal_(s.role == TensorRole::NORM ? 1.0 : 0.0, 0.02);
      writer.write(s.name, t);
    }
    writer.commit();
  }
  tmp_dir.commit();
}

}  // namespace kldq::model
