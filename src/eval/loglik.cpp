// Batched log-likelihoods over right-padded sequences, with or without a cached prefix
// (include/kldq/eval/loglik.hpp).
//
// A batch of three sequences continuing a cache of len = 4 columns (pad = 4 - skip per row):
//
//   cache column   0    1    2    3  | forward column  0    1    2
//   row 0 (skip 4) c0   c1   c2   c3 |                 s0   s1   s2
//   row 1 (skip 2) pad  pad  c0   c1 |                 s0   --   --    (right padding)
//   row 2 (skip 0) pad  pad  pad  pad|                 s0   s1   --
//
// Each row's tokens sit at the same positions as in its unpadded sequence (positions count from
// the row's first real column), so the result equals running every sequence alone. Rows that
// continue one shared prefix (MMLU's few-shot prompt) run packed instead, with no padding.
#include "kldq/eval/loglik.hpp"

#include <algorithm>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"

namespace kldq::eval {

model::Decoder::KvCache expand_cache(const model::Decoder& m, const model::Decoder::KvCache& prefix,
                                     const std::vector<int64_t>& rows, int64_t capacity) {
  const int64_t P = prefix.len;
  check(P > 0 && capacity > P, "expand_cache: nothing cached or no room");
  std::vector<int64_t> pad;
  for (int64_t r : rows) pad.push_back(prefix.pad.at(static_cast<size_t>(r)));
  model::Decoder::KvCache c = m.new_cache(pad, capacity);
  const at::Tensor idx = at::tensor(rows).to(m.device());
  for (size_t i = 0; i < c.k.size(); ++i) {  // [n, kv heads, capacity, d] <- [B, ...] rows
    c.k[i].narrow(2, 0, P).copy_(prefix.k[i].narrow(2, 0, P).index_select(0, idx));
    c.v[i].narrow(2, 0, P).copy_(prefix.v[i].narrow(2, 0, P).index_select(0, idx));
  }
  c.len = P;
  return c;
}

namespace {

// The final hidden states [R, H] at the scored positions of `seqs` (each sequence's last
// `scored` positions, sequence by sequence). Continuations of a shared prefix run packed (no
// padding: Decoder::run_continuations); the others right-padded with token 0 into [n, T] (causal
// attention keeps padding out of every real position).
at::Tensor scored_hidden(const model::Decoder& m, const std::vector<ScoredSequence>& seqs,
                         Continued from) {
  const int64_t n = static_cast<int64_t>(seqs.size());
  int64_t T = 0;
  std::vector<int64_t> lengths;  // tokens each sequence runs
  for (const ScoredSequence& s : seqs) {
    check(from.shared ? s.skip == from.shared->len : from.rows || s.skip == 0,
          "scored_logprobs: skips that do not match the cache");
    lengths.push_back(static_cast<int64_t>(s.ids->size()) - s.skip);
    check(lengths.back() >= s.scored && s.scored >= 1,
          "scored_logprobs: a cached prefix covers a scored position");
    T = std::max(T, lengths.back());
  }
  // On CUDA, padded widths rounded up to a multiple of 64 (within the context): every batch has
  // its own longest sequence, and attention backends that plan per shape (cuDNN's SDPA) would
  // plan for each (unshared MMLU on an H100: 57.7 -> 53.8 s). Causal attention keeps the extra
  // padding out of every real position.
  if (!from.shared && !from.rows)
    T = padded_width(T, m.config().max_position_embeddings, m.device().is_cuda());
  // flat: the tokens, packed ([N]) or right-padded ([n, T]); picks: the scored rows' indices
  std::vector<int64_t> flat, picks;
  for (int64_t r = 0; r < n; ++r) {
    const ScoredSequence& s = seqs[size_t(r)];
    if (!from.shared) flat.resize(size_t(r * T));
    const auto first = static_cast<int64_t>(flat.size());
    flat.insert(flat.end(), s.ids->begin() + s.skip, s.ids->end());
    for (int64_t k = 0; k < s.scored; ++k)
      picks.push_back(first + lengths[size_t(r)] - s.scored + k);
  }
  if (!from.shared) flat.resize(size_t(n * T));
  const at::Tensor ids = at::tensor(flat);
  const at::Tensor h = from.shared ? m.run_continuations(ids, lengths, *from.shared)  // [N, H]
                       : from.rows ? m.run_cached(ids.view({n, T}), *from.rows)       // [n, T, H]
                                   : m.run_blocks(0, m.num_blocks(), m.embed(ids.view({n, T})));
  return h.reshape({-1, h.size(-1)}).index_select(0, at::tensor(picks).to(h.device()));  // [R, H]
}

}  // namespace

at::Tensor scored_logprobs(const model::Decoder& m, const std::vector<ScoredSequence>& seqs,
                           Continued from, const at::Tensor& columns) {
  const at::Tensor rows = scored_hidden(m, seqs, from);  // [R, H]
  const int64_t R = rows.size(0);
  check(columns.dim() == 2 && columns.size(0) == R, "scored_logprobs: one row of columns each");
  const at::Tensor cols = columns.to(rows.device());
  // The head in chunks of rows, so [rows, V] logits stay bounded however many positions a batch
  // scores; fp32 log-softmax whatever the model's dtype (log-likelihoods sum many small terms).
  constexpr int64_t kRows = 1024;
  std::vector<at::Tensor> out;
  for (const auto [r, k] : batches(R, kRows)) {
    const at::Tensor lp =
        at::log_softmax(m.head(rows.narrow(0, r, k).unsqueeze(0)).squeeze(0), -1, at::kFloat);
    out.push_back(lp.gather(1, cols.narrow(0, r, k)));  // [k, columns]
  }
  return at::cat(out).to(at::kCPU, at::kDouble).contiguous();  // [R, columns]
}

int64_t padded_width(int64_t longest, int64_t ctx, bool cuda) {
  if (!cuda) return longest;
  return std::max(longest, std::min((longest + 63) / 64 * 64, ctx));
}

int64_t common_prefix(const std::vector<ScoredSequence>& seqs) {
  const std::vector<int32_t>& a = *seqs.front().ids;
  size_t p = a.size();
  for (const ScoredSequence& s : seqs) {
    const std::vector<int32_t>& b = *s.ids;
    const auto own = static_cast<size_t>(std::max<int64_t>(1, s.scored));  // left to each
    p = b.size() > own ? std::min(p, b.size() - own) : 0;
    p = static_cast<size_t>(std::mismatch(a.begin(), a.begin() + long(p), b.begin()).first -
                            a.begin());
  }
  return static_cast<int64_t>(p);
}

}  // namespace kldq::eval
