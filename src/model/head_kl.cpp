// The chunked LM head + per-token KL scorer of the profile and of eval's perplexity.
#include "kldq/model/head_kl.hpp"

#include <ATen/ATen.h>

#include "kldq/core/batches.hpp"

namespace kldq::model {

at::Tensor HiddenRows::logits(int64_t start, int64_t len) const {
  const at::Tensor r = rows.narrow(0, start, len);  // [len, H]
  // head() takes [B, T, H]: the chunk as one sequence.
  return normed ? model->logits(r) : model->head(r.unsqueeze(0)).squeeze(0);  // [len, V]
}

void score_rows(const std::vector<HiddenRows>& states, const HiddenRows* reference,
                const at::Tensor& target, int64_t chunk, const ChunkScoresFn& fn) {
  if (states.empty()) return;
  for (const auto [r, len] : batches(states.front().rows.size(0), chunk)) {
    const at::Tensor tgt = target.narrow(0, r, len);                              // [len]
    const at::Tensor ref = reference ? reference->logits(r, len) : at::Tensor();  // [len, V]
    for (size_t k = 0; k < states.size(); ++k) {
      const at::Tensor logits = states[k].logits(r, len);  // [len, V]
      if (!ref.defined()) {  // fp32 log-softmax of the chunk; the whole set is never materialised
        kernels::TokenKl t;
        t.nll = -at::log_softmax(logits, -1, at::kFloat).gather(1, tgt.unsqueeze(1)).squeeze(1);
        fn(k, t);
        continue;
      }
      // Both read in their stored dtype: the KL kernel never rounds log-probabilities to 16 bits
      // (that biases KL negative). A reference on another device is brought to the state's.
      fn(k, kernels::token_kl(logits, ref.to(logits.device()), tgt));
    }
  }
}

}  // namespace kldq::model
