// Continuations of a shared prefix (MMLU's few-shot prompt): every row attends to the same P
// prefix columns and to its own T tokens. Softmax attention over the union of two key sets is
// the two softmaxes joined by their log-sum-exps (as flash attention joins its key tiles):
//
//   o = (o_pre w_pre + o_own w_own) / (w_pre + w_own),  w_x = exp(l_x - max(l_pre, l_own))
//   l_x = log sum_k exp(q.k / sqrt(d)) over key set x,  o_x its softmax-weighted values
//
// so the prefix's keys are read once for all B*T queries (one sequence of B*T queries, nothing
// masked) instead of being copied into every row, and each row's own part is plain causal
// attention: no mask tensor, so CUDA runs both parts in flash attention. Elsewhere (CPU, fp32)
// both parts are computed explicitly in fp32, the reference the tests hold the full forward to.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "cascade.hpp"
#include "kldq/core/error.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::model {
namespace {

// One key set's attention: o [B, T, nq, d] (any float dtype), lse [B, T, nq, 1] fp32.
struct Part {
  at::Tensor o, lse;
};

// Explicit fp32 softmax attention. k/v [1 or B, nkv, S, d]; causal: query t sees keys 0..t.
Part explicit_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  const int64_t B = q.size(0), nq = q.size(1), T = q.size(2), d = q.size(3);
  const int64_t nkv = k.size(1), g = nq / nkv, S = k.size(2);
  // The g query heads of a kv head stacked along the rows: [B, nkv, g T, d].
  const at::Tensor qg = q.to(at::kFloat).reshape({B, nkv, g * T, d});
  at::Tensor s = at::matmul(qg, k.to(at::kFloat).transpose(-1, -2)) /
                 std::sqrt(static_cast<double>(d));  // [B, nkv, g T, S]
  if (causal) {
    const auto i64 = at::TensorOptions().dtype(at::kLong).device(q.device());
    const at::Tensor t = at::arange(T, i64).repeat({g}).view({g * T, 1});  // each row's position
    s.masked_fill_(at::arange(S, i64).view({1, S}) > t, -std::numeric_limits<double>::infinity());
  }
  const at::Tensor lse = at::logsumexp(s, -1, true);                   // [B, nkv, g T, 1]
  const at::Tensor o = at::matmul((s - lse).exp(), v.to(at::kFloat));  // [B, nkv, g T, d]
  return {o.view({B, nq, T, d}).transpose(1, 2), lse.view({B, nq, T, 1}).transpose(1, 2)};
}

// Flash attention (CUDA, fp16/bf16). With a one-row k/v and B > 1 rows of queries, the B*T
// queries run as one sequence over it.
Part flash_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  const int64_t B = q.size(0), nq = q.size(1), T = q.size(2), d = q.size(3), S = k.size(2);
  const bool shared = k.size(0) == 1 && B > 1;
  const int64_t rows = shared ? 1 : B, Tq = shared ? B * T : T;
  const at::Tensor qt = q.transpose(1, 2).reshape({rows, Tq, nq, d});  // [rows, Tq, nq, d]
  const at::Tensor kt = k.transpose(1, 2).contiguous(), vt = v.transpose(1, 2).contiguous();
  const auto r = at::_flash_attention_forward(qt, kt, vt, std::nullopt, std::nullopt, Tq, S, 0.0,
                                              causal, false);
  const at::Tensor lse = std::get<1>(r).narrow(-1, 0, Tq);  // [rows, nq, Tq] fp32
  return {
      std::get<0>(r).view({B, T, nq, d}),
      (shared ? lse.view({nq, B, T}).permute({1, 2, 0}) : lse.permute({0, 2, 1})).unsqueeze(-1)};
}

bool flash_applies(const at::Tensor& q) {
  const auto t = q.scalar_type();
  return q.is_cuda() && (t == at::kHalf || t == at::kBFloat16) && q.size(3) % 8 == 0 &&
         q.size(3) <= 256;
}

// x [1, n, N, d] of packed rows -> [rows, n, width, d], zeros at the padding.
at::Tensor unpack(const at::Tensor& x, const Packing& p) {
  const int64_t n = x.size(1), d = x.size(3);
  at::Tensor out = at::zeros({p.rows * p.width, n, d}, x.options());
  out.index_copy_(0, p.slot, x[0].transpose(0, 1));  // [N, n, d] into their slots
  return out.view({p.rows, p.width, n, d}).transpose(1, 2);
}

// A part of padded rows (o [rows, width, nq, d], lse [rows, width, nq, 1]) at the packed tokens:
// o [1, N, nq, d], lse [1, N, nq, 1].
Part pack(const Part& part, const Packing& p) {
  auto at_tokens = [&](const at::Tensor& t) {
    return t.reshape({-1, t.size(2), t.size(3)}).index_select(0, p.slot).unsqueeze(0);
  };
  return {at_tokens(part.o), at_tokens(part.lse)};
}

}  // namespace

at::Tensor flash_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (!flash_applies(q)) return {};
  const int64_t B = q.size(0), T = q.size(2);
  return flash_part(q, k, v, true).o.reshape({B, T, -1});
}

at::Tensor cascade_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& pk, const at::Tensor& pv, const Packing* packing) {
  const bool flash = flash_applies(q);
  const auto part = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        bool causal) {
    return flash ? flash_part(q, k, v, causal) : explicit_part(q, k, v, causal);
  };
  const Part a = part(q, pk, pv, false);
  const Part b =
      packing ? pack(part(unpack(q, *packing), unpack(k, *packing), unpack(v, *packing), true),
                     *packing)
              : part(q, k, v, true);
  // Both log-sum-exps are finite: every query sees the whole prefix (P >= 1) and itself.
  const at::Tensor m = at::maximum(a.lse, b.lse);
  const at::Tensor wa = (a.lse - m).exp(), wb = (b.lse - m).exp();
  const at::Tensor o = (a.o.to(at::kFloat) * wa + b.o.to(at::kFloat) * wb) / (wa + wb);
  const int64_t B = q.size(0), T = q.size(2);
  return o.to(q.scalar_type()).reshape({B, T, -1});  // [B, T, nq d]
}

at::Tensor Decoder::run_continuations(const at::Tensor& ids, const KvCache& prefix) const {
  check(ids.dim() == 2 && ids.size(1) > 0, "run_continuations: ids must be [B, T]");
  const int64_t P = prefix.len, T = ids.size(1);
  const RopeTable& r = continuation_rope(prefix, T);  // positions P .. P+T-1, as in the whole
  return continue_prefix(embed(ids),
                         {&prefix, r.cos.narrow(0, P, T), r.sin.narrow(0, P, T), Packing{}});
}

at::Tensor Decoder::run_continuations(const at::Tensor& ids, const std::vector<int64_t>& lengths,
                                      const KvCache& prefix) const {
  const int64_t N = std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
  check(ids.dim() == 1 && ids.size(0) == N && N > 0 &&
            std::all_of(lengths.begin(), lengths.end(), [](int64_t n) { return n > 0; }),
        "run_continuations: ids must be [N], the rows' lengths summing to N");
  const int64_t P = prefix.len, width = *std::max_element(lengths.begin(), lengths.end());
  const RopeTable& r = continuation_rope(prefix, width);
  std::vector<int64_t> pos, slot;  // token i of row b, t: position P + t, slot b * width + t
  for (size_t b = 0; b < lengths.size(); ++b)
    for (int64_t t = 0; t < lengths[b]; ++t)
      pos.push_back(P + t), slot.push_back(int64_t(b) * width + t);
  const at::Tensor p = at::tensor(pos).to(device()), s = at::tensor(slot).to(device());
  const SharedPrefix shared{&prefix, r.cos.index_select(0, p), r.sin.index_select(0, p),
                            Packing{s, static_cast<int64_t>(lengths.size()), width}};
  return continue_prefix(embed(ids.view({1, N})), shared).squeeze(0);  // [N, H]
}

// The prefix's checks and the RoPE table for `width` more positions.
const Decoder::RopeTable& Decoder::continuation_rope(const KvCache& prefix, int64_t width) const {
  check(prefix.pad.size() == 1 && prefix.pad[0] == 0 && prefix.len > 0,
        "run_continuations: the prefix must be one unpadded row");
  const int64_t n = prefix.len + width;
  if (n > config_.max_position_embeddings)
    throw ConfigError(
        fmt::format("{} tokens exceed the model's context of {} (max_position_embeddings)", n,
                    config_.max_position_embeddings));
  return rope(n);
}

at::Tensor Decoder::continue_prefix(at::Tensor hidden, const SharedPrefix& shared) const {
  return chain_blocks(hidden, nullptr, &shared);
}

}  // namespace kldq::model
