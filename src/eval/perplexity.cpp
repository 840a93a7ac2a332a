// Perplexity protocols (windows), windowed scoring of a model and its reference, and the
// summary statistics of docs/PROTOCOLS.md.
#include "kldq/eval/perplexity.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>

#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/eval/stats.hpp"
#include "kldq/model/head_kl.hpp"

namespace kldq::eval {
namespace {

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// Final hidden states of positions [from, from + len) of every window: [B, len, H].
at::Tensor final_hidden(const model::Decoder& m, const at::Tensor& ids, int64_t from, int64_t len) {
  return m.run_blocks(0, m.num_blocks(), m.embed(ids.to(m.device()))).narrow(1, from, len);
}

// `v` when every score is finite; a NaN or infinite log-probability is an error, never a null
// perplexity: weights are checked at load, so it means the activations overflowed.
std::vector<double> finite_scores(std::vector<double> v, const char* whose) {
  const auto bad = std::find_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); });
  if (bad == v.end()) return v;
  const auto n = std::count_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); });
  throw IoError(fmt::format(
      "perplexity: {} gave non-finite scores at {} of {} tokens (first at token {}): its "
      "activations overflowed the compute dtype (fp16 overflows where bf16 does not: try --dtype "
      "bf16 or fp32)",
      whose, n, v.size(), bad - v.begin()));
}

}  // namespace

PplProtocol parse_ppl_protocol(const std::string& name, const char* option) {
  return kPplProtocols.parse(name, option);
}

const char* ppl_protocol_name(PplProtocol p) {
  return kPplProtocols.name(p);
}

std::vector<Window> make_windows(int64_t n, const PplOptions& o) {
  check(o.ctx >= 2, "make_windows: ctx < 2");
  std::vector<Window> w;
  switch (o.protocol) {
    case PplProtocol::GPTQ:  // all ctx-1 predictions of each non-overlapping window
      for (int64_t b = 0; b + o.ctx <= n; b += o.ctx) w.push_back({b, o.ctx, 0});
      break;
    case PplProtocol::LLAMACPP:  // llama-perplexity: only the second half has enough context
      for (int64_t b = 0; b + o.ctx <= n; b += o.ctx) w.push_back({b, o.ctx, o.ctx / 2});
      break;
    case PplProtocol::SLIDING: {  // HF stride method: each token scored once, by the first
      // window whose end passes it, with up to ctx - stride tokens of context before it.
      const int64_t stride = o.stride > 0 ? o.stride : o.ctx / 2;
      check(stride <= o.ctx, "make_windows: stride > ctx");
      int64_t prev_end = 0;
      for (int64_t b = 0; b < n && n >= 2; b += stride) {
        const int64_t end = std::min(b + o.ctx, n);
        if (end - b >= 2) w.push_back({b, end - b, std::max<int64_t>(prev_end - b - 1, 0)});
        prev_end = end;
        if (end == n) break;
      }
      break;
    }
  }
  return w;
}

namespace {

// The token ids of windows [w, end), all of one length: [B, T] int64, the first column `bos`
// when it is >= 0.
at::Tensor window_ids(const std::vector<int32_t>& tokens, const std::vector<Window>& windows,
                      size_t w, size_t end, int64_t bos) {
  std::vector<int64_t> flat_ids;
  for (size_t k = w; k < end; ++k) {
    const Window& x = windows[k];
    check(x.begin >= 0 && x.begin + x.length <= static_cast<int64_t>(tokens.size()),
          "score_windows: window out of range");
    flat_ids.insert(flat_ids.end(), tokens.begin() + x.begin, tokens.begin() + x.begin + x.length);
  }
  at::Tensor ids = at::tensor(flat_ids).view({static_cast<int64_t>(end - w), windows[w].length});
  if (bos >= 0) ids.select(1, 0).fill_(bos);
  return ids;
}

// Per-token scores (device tensors, one per chunk of rows).
struct RowScores {
  std::vector<at::Tensor> nll, nll_ref, kl, top1;
};

// Scores the rows of final hidden states h: [N, H] (and h_ref of the reference) against target:
// [N], `chunk` rows of logits at a time (model::score_rows; NLL only without a reference).
void score_batch(const model::Decoder& model, const model::Decoder* reference, const at::Tensor& h,
                 const at::Tensor& h_ref, const at::Tensor& target, int64_t chunk, RowScores& acc) {
  const model::HiddenRows ref{reference, h_ref, false};
  model::score_rows({{&model, h, false}}, reference ? &ref : nullptr, target, chunk,
                    [&](size_t, const kernels::TokenKl& t) {
                      acc.nll.push_back(t.nll);
                      if (!reference) return;
                      acc.nll_ref.push_back(t.nll_ref);
                      acc.kl.push_back(t.kl);
                      acc.top1.push_back(t.same_top1);
                    });
}

}  // namespace

TokenScores score_windows(const model::Decoder& model, const model::Decoder* reference,
                          const std::vector<int32_t>& tokens, const std::vector<Window>& windows,
                          const PplOptions& o) {
  check(o.batch >= 1 && o.chunk >= 1, "score_windows: bad options");
  TokenScores s;
  RowScores acc;
  at::InferenceMode guard;
  Progress progress("perplexity", static_cast<int64_t>(windows.size()), "windows");
  PhaseTimer timer(model.device(),
                   {"model blocks", "reference blocks", "heads + per-token scores"});
  for (size_t w = 0, batch = 0; w < windows.size(); ++batch) {
    // A batch: consecutive windows of the same length and scored range.
    const Window& first = windows[w];
    size_t end = w;
    while (end < windows.size() && static_cast<int64_t>(end - w) < o.batch &&
           windows[end].length == first.length && windows[end].score_from == first.score_from)
      ++end;
    if (!o.shard.owns(batch)) {  // another shard's batch: the same batches in every shard
      progress.advance(int64_t(end - w));
      w = end;
      continue;
    }
    const int64_t B = static_cast<int64_t>(end - w), T = first.length;
    const at::Tensor ids = window_ids(tokens, windows, w, end, o.bos);  // [B, T] int64
    const int64_t from = first.score_from, S = T - 1 - from;  // S scored positions per window
    timer.start();
    const at::Tensor h = final_hidden(model, ids, from, S).reshape({B * S, -1});  // [B*S, H]
    timer.lap(0);
    const at::Tensor h_ref =
        reference ? final_hidden(*reference, ids, from, S).reshape({B * S, -1}) : at::Tensor();
    const at::Tensor target =
        ids.narrow(1, from + 1, S).reshape({B * S}).to(model.device());  // [B*S] int64
    timer.lap(1);
    score_batch(model, reference, h, h_ref, target, o.chunk, acc);
    timer.lap(2);
    s.windows += B;
    for (size_t k = w; k < end; ++k) s.scored.push_back({int64_t(k), S});
    progress.advance(B);
    w = end;
  }
  timer.report();
  if (acc.nll.empty()) return s;
  s.nll = finite_scores(to_vector(at::cat(acc.nll)), "the model");
  if (reference) {
    s.nll_ref = finite_scores(to_vector(at::cat(acc.nll_ref)), "the reference");
    s.kl = finite_scores(to_vector(at::cat(acc.kl)), "the KL against the reference");
    const at::Tensor t = at::cat(acc.top1).to(at::kCPU, at::kByte).contiguous();
    s.same_top1.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  }
  return s;
}

nlohmann::json ppl_summary(const std::vector<double>& nll, int64_t windows,
                           const std::string& suffix) {
  const double m = mean(nll);
  return {{"ppl" + suffix, std::exp(m)},
          {"nll_mean" + suffix, m},
          {"tokens" + suffix, nll.size()},
          {"windows" + suffix, windows}};
}

nlohmann::json kl_summary(const TokenScores& s) {
  std::vector<double> sorted = s.kl;
  std::sort(sorted.begin(), sorted.end());
  std::vector<double> diff(s.nll.size()), dp(s.nll.size());
  for (size_t i = 0; i < s.nll.size(); ++i) {
    diff[i] = s.nll[i] - s.nll_ref[i];
    dp[i] = std::exp(-s.nll[i]) - std::exp(-s.nll_ref[i]);
  }
  double dp_sq = 0;
  for (double x : dp) dp_sq += x * x;
  const double same = s.same_top1.empty()
                          ? 0.0
                          : double(std::count(s.same_top1.begin(), s.same_top1.end(), 1)) /
                                double(s.same_top1.size());
  return {{"kl_mean", mean(s.kl)},
          {"kl_stderr", stderr_of_mean(s.kl)},
          {"kl_median", percentile(sorted, 50)},
          {"kl_p90", percentile(sorted, 90)},
          {"kl_p95", percentile(sorted, 95)},
          {"kl_p99", percentile(sorted, 99)},
          {"kl_p99_9", percentile(sorted, 99.9)},
          {"kl_max", sorted.empty() ? 0.0 : sorted.back()},
          {"top1_agree", same},
          {"dp_mean", mean(dp)},
          {"dp_rms", dp.empty() ? 0.0 : std::sqrt(dp_sq / double(dp.size()))},
          {"ln_ppl_ratio", mean(diff)},
          {"ln_ppl_ratio_stderr", stderr_of_mean(diff)}};
}

}  // namespace kldq::eval
