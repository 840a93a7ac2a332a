// Expected checkpoint tensors of qwen2/llama/mistral decoders.
#include "kldq/model/layout.hpp"

#include <fmt/format.h>

#include "kldq/formats/packed.hpp"

namespace kldq::model {

std::vector<LayerId> linear_ids(const ModelConfig& c) {
  std::vector<LayerId> ids;
  for (int b = 0; b < c.num_layers; ++b)
    for (Proj p : kAllProjs) ids.push_back({b, p});
  return ids;
}

std::vector<int64_t> linear_shape(const ModelConfig& c, Proj p) {
  switch (p) {
    case Proj::Q:
      return {c.q_dim(), c.hidden_size};
    case Proj::K:
    case Proj::V:
      return {c.kv_dim(), c.hidden_size};
    case Proj::O:
      return {c.hidden_size, c.q_dim()};
    case Proj::GATE:
    case Proj::UP:
      return {c.intermediate_size, c.hidden_size};
    case Proj::DOWN:
      return {c.hidden_size, c.intermediate_size};
  }
  return {};
}

std::vector<TensorSlot> expected_tensors(const ModelConfig& c, const LayerFormats& formats,
                                         const std::set<std::string>& input_scaled) {
  std::vector<TensorSlot> out;
  const int64_t H = c.hidden_size;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, TensorRole::EMBED, {}, {}});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    auto add_linear = [&](Proj proj, bool bias) {
      const LayerId id{i, proj};
      const std::vector<int64_t> shape = linear_shape(c, proj);
      const auto f = formats.find(id.name());
      if (f == formats.end()) {
        out.push_back({id.name() + ".weight", shape, TensorRole::LINEAR_WEIGHT, id, {}});
      } else {
        for (const auto& part : formats::packed_layout(f->second, shape[0], shape[1]))
          out.push_back(
              {id.name() + "." + part.suffix, part.shape,
               part.suffix == "weight" ? TensorRole::LINEAR_WEIGHT : TensorRole::LINEAR_PART, id,
               part.dtype});
      }
      if (input_scaled.count(id.name()))
        out.push_back(
            {id.name() + ".input_scale", {shape[1]}, TensorRole::LINEAR_PART, id, at::kBFloat16});
      if (bias) out.push_back({id.name() + ".bias", {shape[0]}, TensorRole::LINEAR_BIAS, id, {}});
    };
    out.push_back({p + "input_layernorm.weight", {H}, TensorRole::NORM, {}, {}});
    add_linear(Proj::Q, c.attention_bias);
    add_linear(Proj::K, c.attention_bias);
    add_linear(Proj::V, c.attention_bias);
    add_linear(Proj::O, c.o_bias);
    out.push_back({p + "post_attention_layernorm.weight", {H}, TensorRole::NORM, {}, {}});
    add_linear(Proj::GATE, c.mlp_bias);
    add_linear(Proj::UP, c.mlp_bias);
    add_linear(Proj::DOWN, c.mlp_bias);
  }
  out.push_back({"model.norm.weight", {H}, TensorRole::NORM, {}, {}});
  if (!c.tie_word_embeddings)
    out.push_back({"lm_head.weight", {c.vocab_size, H}, TensorRole::LM_HEAD, {}, {}});
  return out;
}

}  // namespace kldq::model
