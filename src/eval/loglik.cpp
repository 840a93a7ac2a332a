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
// the row's first real column), so the result equals running every sequence alone.
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

at::Tensor scored_logprobs(const model::Decoder& m, const std::vector<ScoredSequence>& seqs,
                           Continued from, const at::Tensor& columns) {
  const int64_t n = static_cast<int64_t>(seqs.size());
  int64_t T = 0;
  for (const ScoredSequence& s : seqs) {
    check(from.shared ? s.skip == from.shared->len : from.rows || s.skip == 0,
          "scored_logprobs: skips that do not match the cache");
    T = std::max<int64_t>(T, static_cast<int64_t>(s.ids->size()) - s.skip);
  }
  // flat: [n, T] ids, right-padded; row_b/row_t: the scored (row, column) pairs [R]
  std::vector<int64_t> flat(static_cast<size_t>(n * T), 0), row_b, row_t;
  for (int64_t r = 0; r < n; ++r) {
    const ScoredSequence& s = seqs[size_t(r)];
    const int64_t len = static_cast<int64_t>(s.ids->size()) - s.skip;  // tokens this forward runs
    check(len >= s.scored && s.scored >= 1,
          "scored_logprobs: a cached prefix covers a scored position");
    std::copy(s.ids->begin() + s.skip, s.ids->end(), flat.begin() + r * T);
    for (int64_t k = 0; k < s.scored; ++k) row_b.push_back(r), row_t.push_back(len - s.scored + k);
  }
  const int64_t R = static_cast<int64_t>(row_b.size());
  check(columns.dim() == 2 && columns.size(0) == R, "scored_logprobs: one row of columns each");
  const at::Tensor ids = at::tensor(flat).view({n, T});                      // [n, T]
  const at::Tensor h = from.shared ? m.run_continuations(ids, *from.shared)  // [n, T, H]
                       : from.rows ? m.run_cached(ids, *from.rows)
                                   : m.run_blocks(0, m.num_blocks(), m.embed(ids));
  const at::Tensor rows =
      h.index({at::tensor(row_b).to(h.device()), at::tensor(row_t).to(h.device())});  // [R, H]
  const at::Tensor cols = columns.to(h.device());
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
