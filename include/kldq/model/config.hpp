// Model architecture from a Hugging Face config.json: qwen2, llama and mistral decoders
// (pre-norm, RMSNorm, GQA attention with RoPE, SwiGLU MLP).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace kldq::model {

enum class Arch { QWEN2, LLAMA, MISTRAL };

struct ModelConfig {
  Arch arch = Arch::QWEN2;
  std::string model_type;  // as written in config.json
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (always on for qwen2)
  bool o_bias = false;          // o_proj bias (llama attention_bias applies to o_proj too)
  bool mlp_bias = false;
  std::string torch_dtype;  // checkpoint dtype as declared ("bfloat16"), informative

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters of the decoder (embeddings, blocks, final norm, untied LM head).
  int64_t num_parameters() const;
  nlohmann::json to_json() const;  // HF config.json spelling, round-trips through from_json
};

// The transformers class name of an architecture ("Qwen2ForCausalLM").
const char* arch_class_name(Arch arch);

// Parses and validates; errors are ConfigError naming `source` and the key.
ModelConfig parse_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_config(const std::filesystem::path& config_json);

}  // namespace kldq::model
