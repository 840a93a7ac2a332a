// config.json parsing for qwen2 / llama / mistral, with the defaults transformers uses for
// absent keys, and a ConfigError naming the file and key for anything wrong or unsupported.
#include "kldq/model/config.hpp"

#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::model {
namespace {

using nlohmann::json;

constexpr int64_t kMaxWidth = int64_t{1} << 20;  // hidden and intermediate sizes
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxHeadDim = 4096;
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxPositions = int64_t{1} << 24;  // RoPE angles are exact in fp32 below this

// config.json's members with transformers' defaults for absent keys; errors in the document
// reader's format (`config.json: key: ...`).
struct Reader {
  io::Doc d;

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    io::Doc(d.json(), d.file(), io::DocKind::CONFIG, key).fail(msg);
  }
  bool has(const std::string& key) const { return d.has(key); }
  // Upper bounds far above any real model keep every derived size (q_dim, parameter counts,
  // buffer shapes) inside int64 and stop a hostile config.json from requesting huge buffers.
  int64_t positive_int(const std::string& key, int64_t max) const {
    if (!has(key)) fail(key, "missing required key");
    const io::Doc v = d[key];
    if (!v.json().is_number_integer() || v.json().get<int64_t>() <= 0)
      v.fail(fmt::format("expected a positive integer, got {}", v.shown()));
    if (v.json().get<int64_t>() > max) v.fail(fmt::format("{} is larger than {}", v.shown(), max));
    return v.json().get<int64_t>();
  }
  int64_t positive_int_or(const std::string& key, int64_t max, int64_t fallback) const {
    return has(key) ? positive_int(key, max) : fallback;
  }
  double positive_number_or(const io::Doc& obj, const std::string& key, double fallback) const {
    if (!obj.has(key)) return fallback;
    const io::Doc v = obj[key];
    if (!v.json().is_number() || v.json().get<double>() <= 0)
      v.fail(fmt::format("expected a positive number, got {}", v.shown()));
    return v.json().get<double>();
  }
  bool boolean_or(const std::string& key, bool fallback) const { return d.bool_or(key, fallback); }
  std::string string_or(const std::string& key, const std::string& fallback) const {
    return d.str_or(key, fallback);
  }
};

// RoPE: transformers 5 writes rope_parameters {rope_theta, rope_type}; older files write
// rope_theta at the top level and an optional rope_scaling. Only unscaled RoPE is implemented;
// any scaling type is refused rather than silently ignored.
void parse_rope(const Reader& r, ModelConfig& c) {
  c.rope_theta = r.positive_number_or(r.d, "rope_theta", 10000.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!r.has(key)) continue;
    const io::Doc rp = r.d[key];
    rp.require_object();
    c.rope_theta = r.positive_number_or(rp, "rope_theta", c.rope_theta);
    std::string type = "default";
    for (const char* tkey : {"rope_type", "type"})
      if (rp.has(tkey) && rp.json()[tkey].is_string()) type = rp.json()[tkey].get<std::string>();
    if (type != "default")
      throw UnsupportedError(fmt::format(
          "{}: {}.rope_type: RoPE scaling '{}' is not supported (only unscaled 'default' RoPE)",
          r.d.file(), key, io::shown_text(type)));
  }
}

}  // namespace

ModelConfig parse_config(const json& j, const std::string& source) {
  Reader r{io::Doc(j, source, io::DocKind::CONFIG)};
  r.d.require_object();
  ModelConfig c;
  c.model_type = r.string_or("model_type", "");
  if (c.model_type == "qwen2")
    c.arch = Arch::QWEN2;
  else if (c.model_type == "llama")
    c.arch = Arch::LLAMA;
  else if (c.model_type == "mistral")
    c.arch = Arch::MISTRAL;
  else if (c.model_type.empty())
    r.fail("model_type", "missing required key");
  else
    throw UnsupportedError(
        fmt::format("{}: model_type: '{}' is not supported (qwen2, llama, mistral)", source,
                    io::shown_text(c.model_type)));
  c.hidden_size = r.positive_int("hidden_size", kMaxWidth);
  c.intermediate_size = r.positive_int("intermediate_size", kMaxWidth);
  c.num_layers = r.positive_int("num_hidden_layers", kMaxLayers);
  c.num_heads = r.positive_int("num_attention_heads", kMaxHeads);
  c.num_kv_heads = r.positive_int_or("num_key_value_heads", kMaxHeads, c.num_heads);
  c.vocab_size = r.positive_int("vocab_size", kMaxVocab);
  c.max_position_embeddings = r.positive_int_or("max_position_embeddings", kMaxPositions, 2048);
  if (c.hidden_size % c.num_heads != 0 && !r.has("head_dim"))
    r.fail("head_dim", "missing, and hidden_size is not a multiple of num_attention_heads");
  c.head_dim = r.positive_int_or("head_dim", kMaxHeadDim, c.hidden_size / c.num_heads);
  if (c.head_dim % 2 != 0)
    r.fail("head_dim", fmt::format("must be even for RoPE, got {}", c.head_dim));
  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("num_key_value_heads",
           fmt::format("{} does not divide num_attention_heads {}", c.num_kv_heads, c.num_heads));
  c.rms_norm_eps = r.positive_number_or(r.d, "rms_norm_eps", 1e-6);
  parse_rope(r, c);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  if (c.arch == Arch::QWEN2) {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else {
    c.attention_bias = c.o_bias = r.boolean_or("attention_bias", false);
    c.mlp_bias = r.boolean_or("mlp_bias", false);
  }
  const std::string act = r.string_or("hidden_act", "silu");
  if (act != "silu")
    throw UnsupportedError(
        fmt::format("{}: hidden_act: '{}' is not supported (silu)", source, io::shown_text(act)));
  if (r.boolean_or("use_sliding_window", false) ||
      (c.arch == Arch::MISTRAL && r.has("sliding_window") &&
       r.positive_int("sliding_window", kMaxPositions) < c.max_position_embeddings))
    throw UnsupportedError(fmt::format(
        "{}: sliding-window attention is not supported (use_sliding_window/sliding_window)",
        source));
  c.torch_dtype = r.string_or("torch_dtype", r.string_or("dtype", ""));
  return c;
}

ModelConfig load_config(const std::filesystem::path& config_json) {
  return parse_config(io::read_json_file(config_json, /*config=*/true), config_json.string());
}

const char* arch_class_name(Arch arch) {
  switch (arch) {
    case Arch::QWEN2:
      return "Qwen2ForCausalLM";
    case Arch::LLAMA:
      return "LlamaForCausalLM";
    case Arch::MISTRAL:
      return "MistralForCausalLM";
  }
  return "?";
}

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden_size;
  int64_t attn = h * q_dim() + 2 * h * kv_dim() + q_dim() * h;
  if (attention_bias) attn += q_dim() + 2 * kv_dim();
  if (o_bias) attn += h;
  int64_t mlp = 3 * h * intermediate_size;
  if (mlp_bias) mlp += 2 * intermediate_size + h;
  const int64_t block = attn + mlp + 2 * h;
  const int64_t embed = vocab_size * h;
  return embed + num_layers * block + h + (tie_word_embeddings ? 0 : embed);
}

nlohmann::json ModelConfig::to_json() const {
  json j = {{"architectures", {arch_class_name(arch)}},
            {"model_type", model_type},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"num_hidden_layers", num_layers},
            {"num_attention_heads", num_heads},
            {"num_key_value_heads", num_kv_heads},
            {"head_dim", head_dim},
            {"vocab_size", vocab_size},
            {"max_position_embeddings", max_position_embeddings},
            {"rms_norm_eps", rms_norm_eps},
            {"rope_theta", rope_theta},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", tie_word_embeddings},
            {"torch_dtype", torch_dtype}};
  if (arch != Arch::QWEN2) {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
  } else {
    j["use_sliding_window"] = false;
  }
  return j;
}

}  // namespace kldq::model
