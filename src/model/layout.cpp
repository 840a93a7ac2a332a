// Expected checkpoint tensors of qwen2/llama/mistral decoders.
#include "kldq/model/layout.hpp"

#include <fmt/format.h>

namespace kldq::model {

std::vector<TensorSlot> expected_tensors(const ModelConfig& c) {
  std::vector<TensorSlot> out;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, TensorRole::EMBED, {}});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    auto add_linear = [&](Proj proj, int64_t rows, int64_t cols, bool bias) {
      const LayerId id{i, proj};
      out.push_back({id.name() + ".weight", {rows, cols}, TensorRole::LINEAR_WEIGHT, id});
      if (bias) out.push_back({id.name() + ".bias", {rows}, TensorRole::LINEAR_BIAS, id});
    };
    out.push_back({p + "input_layernorm.weight", {H}, TensorRole::NORM, {}});
    add_linear(Proj::Q, c.q_dim(), H, c.attention_bias);
    add_linear(Proj::K, c.kv_dim(), H, c.attention_bias);
    add_linear(Proj::V, c.kv_dim(), H, c.attention_bias);
    add_linear(Proj::O, H, c.q_dim(), c.o_bias);
    out.push_back({p + "post_attention_layernorm.weight", {H}, TensorRole::NORM, {}});
    add_linear(Proj::GATE, I, H, c.mlp_bias);
    add_linear(Proj::UP, I, H, c.mlp_bias);
    add_linear(Proj::DOWN, H, I, c.mlp_bias);
  }
  out.push_back({"model.norm.weight", {H}, TensorRole::NORM, {}});
  if (!c.tie_word_embeddings)
    out.push_back({"lm_head.weight", {c.vocab_size, H}, TensorRole::LM_HEAD, {}});
  return out;
}

}  // namespace kldq::model
