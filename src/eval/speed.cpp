// `kldq eval --speed` (docs/PROTOCOLS.md, "Decode speed"): the same random prompts through the
// generator at each batch size. The prefill time ends with the first token's choice; each decode
// step reads its tokens back to the host, so both times include the device's work.
#include "kldq/eval/speed.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/eval/generate.hpp"

namespace kldq::eval {

void check_speed_protocol(const model::ModelConfig& c, const SpeedProtocol& p,
                          const std::string& what) {
  if (p.prompt + p.new_tokens > c.max_position_embeddings)
    throw ConfigError(
        fmt::format("{}: prompts of {} tokens and {} new tokens exceed the model's context of {} "
                    "(max_position_embeddings)",
                    what, p.prompt, p.new_tokens, c.max_position_embeddings));
}

uint64_t speed_working(const model::ModelConfig& c, const SpeedProtocol& p, c10::ScalarType dtype) {
  int64_t B = 1;
  for (int64_t b : p.batches) B = std::max(B, b);
  const uint64_t cols = uint64_t(p.prompt + p.new_tokens), e = c10::elementSize(dtype);
  const uint64_t cache = 2 * uint64_t(c.num_layers) * uint64_t(B) * uint64_t(c.kv_dim()) * cols * e;
  // Prefill [B, prompt] with its fp32 attention scores and a mask, as the math kernel would need
  // (an upper bound: an unpadded first prefill builds no mask, and CUDA runs it in flash
  // attention), and the last position's logits in fp32 on the host side's copy.
  return cache + model::forward_bytes(c, B, p.prompt, dtype) +
         uint64_t(B) * uint64_t(p.prompt) * cols * (4 * uint64_t(c.num_heads) + 1) +
         model::head_bytes(c, B, e + 4);
}

nlohmann::json measure_speed(const model::Decoder& m, const SpeedProtocol& p,
                             std::string& summary) {
  check_speed_protocol(m.config(), p);
  // As every other evaluation: no autograd records, and the layers' shared dequantization
  // workspace (made under InferenceMode by an earlier evaluation) may be written in place.
  at::InferenceMode guard;
  nlohmann::json j = {{"prompt", p.prompt}, {"new_tokens", p.new_tokens}};
  at::Generator gen = at::detail::createCPUGenerator(0);  // the same prompts on every run
  for (int64_t B : p.batches) {
    const at::Tensor ids =  // [B, prompt] uniform over the vocabulary
        at::randint(m.config().vocab_size, {B, p.prompt}, gen, at::TensorOptions(at::kLong));
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* row = ids[b].data_ptr<int64_t>();
      prompts.emplace_back(row, row + p.prompt);
    }
    GenerateOptions o;  // greedy; no stop ids: every row emits all new tokens
    o.max_new_tokens = p.new_tokens;
    // Warm-up, untimed: the same run once (kernels load lazily, cuBLAS and cuDNN plan per shape,
    // and the cache's shapes depend on the number of new tokens).
    generate(m, prompts, o);
    GenerateStats s;
    generate(m, prompts, o, {}, &s);
    // The first new token belongs to the prefill (its logits come from the prompt's pass).
    const double prefill = double(s.prompt_tokens) / s.prefill_s;
    const double decode = double(s.new_tokens - B) / s.decode_s;
    nlohmann::json& r = j[fmt::format("b{}", B)];
    r = {{"prefill_tokens_per_second", prefill},
         {"decode_tokens_per_second", decode},
         {"prefill_s", s.prefill_s},
         {"decode_s", s.decode_s}};
    std::string steady;
    if (s.replay_steps > 0) {
      // Steps replayed from the graph alone (no eager first step, no capture): the per-step rate
      // that a fraction of the memory bandwidth compares with.
      const double step_s = s.replay_s / double(s.replay_steps);
      r["replayed_step_ms"] = step_s * 1e3;
      r["replayed_decode_tokens_per_second"] = double(B) / step_s;
      steady = fmt::format(" ({:.1f} in replayed steps)", double(B) / step_s);
    }
    summary += fmt::format("speed batch {}: prefill {:.0f} tokens/s, decode {:.1f} tokens/s{}\n", B,
                           prefill, decode, steady);
  }
  return j;
}

}  // namespace kldq::eval
