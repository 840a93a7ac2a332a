// Windowed scoring of a model and its reference, and the summary statistics of docs/PROTOCOLS.md.
#include "kldq/eval/perplexity.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kldq/core/error.hpp"

namespace kldq::eval {
namespace {

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

double stderr_of_mean(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / double(v.size() - 1) / double(v.size()));
}

// numpy.percentile(v, q) with linear interpolation; `sorted` ascending.
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const double pos = q / 100.0 * double(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - double(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace

TokenScores score_windows(const model::Decoder& model, const model::Decoder* reference,
                          const std::vector<int32_t>& tokens, const PplOptions& o) {
  check(o.ctx >= 2 && o.batch >= 1 && o.chunk >= 1, "score_windows: bad options");
  TokenScores s;
  const int64_t n_windows = static_cast<int64_t>(tokens.size()) / o.ctx;
  if (n_windows == 0) return s;
  const at::Tensor all =
      at::tensor(std::vector<int64_t>(tokens.begin(), tokens.begin() + n_windows * o.ctx))
          .view({n_windows, o.ctx});               // [W, ctx] int64
  std::vector<at::Tensor> nll, nll_ref, kl, top1;  // device tensors, one per chunk
  at::InferenceMode guard;
  for (int64_t w = 0; w < n_windows; w += o.batch) {
    const at::Tensor ids = all.narrow(0, w, std::min(o.batch, n_windows - w)).to(model.device());
    const int64_t B = ids.size(0), T = o.ctx;
    const at::Tensor logits = model.forward(ids).narrow(1, 0, T - 1);  // [B, T-1, V]
    const at::Tensor ref_logits =
        reference ? reference->forward(ids.to(reference->device())).narrow(1, 0, T - 1)
                  : at::Tensor();
    const int64_t V = logits.size(-1);
    const at::Tensor flat = logits.reshape({B * (T - 1), V});
    const at::Tensor flat_ref = reference ? ref_logits.reshape({B * (T - 1), V}) : at::Tensor();
    const at::Tensor target = ids.narrow(1, 1, T - 1).reshape({B * (T - 1), 1});  // [N, 1]
    for (int64_t r = 0; r < flat.size(0); r += o.chunk) {
      const int64_t len = std::min(o.chunk, flat.size(0) - r);
      // fp32 log-softmax of a chunk: [len, V]; the whole set is never materialised.
      const at::Tensor lp = at::log_softmax(flat.narrow(0, r, len).to(at::kFloat), -1);
      const at::Tensor tgt = target.narrow(0, r, len);
      nll.push_back(-lp.gather(1, tgt).squeeze(1));
      if (!reference) continue;
      const at::Tensor lr =
          at::log_softmax(flat_ref.narrow(0, r, len).to(lp.device(), at::kFloat), -1);
      nll_ref.push_back(-lr.gather(1, tgt).squeeze(1));
      kl.push_back((lr.exp() * (lr - lp)).sum(-1));
      top1.push_back(lr.argmax(-1) == lp.argmax(-1));
    }
    s.windows += B;
  }
  s.nll = to_vector(at::cat(nll));
  if (reference) {
    s.nll_ref = to_vector(at::cat(nll_ref));
    s.kl = to_vector(at::cat(kl));
    const at::Tensor t = at::cat(top1).to(at::kCPU, at::kByte).contiguous();
    s.same_top1.assign(t.data_ptr<uint8_t>(), t.data_ptr<uint8_t>() + t.numel());
  }
  return s;
}

nlohmann::json ppl_summary(const std::vector<double>& nll, int64_t windows) {
  const double m = mean(nll);
  return {{"tokens", nll.size()}, {"windows", windows}, {"nll_mean", m}, {"ppl", std::exp(m)}};
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
  return {{"tokens", s.kl.size()},
          {"mean", mean(s.kl)},
          {"stderr", stderr_of_mean(s.kl)},
          {"median", percentile(sorted, 50)},
          {"p90", percentile(sorted, 90)},
          {"p95", percentile(sorted, 95)},
          {"p99", percentile(sorted, 99)},
          {"p99_9", percentile(sorted, 99.9)},
          {"max", sorted.empty() ? 0.0 : sorted.back()},
          {"same_top1", same},
          {"delta_p_mean", mean(dp)},
          {"delta_p_rms", dp.empty() ? 0.0 : std::sqrt(dp_sq / double(dp.size()))},
          {"ln_ppl_ratio", mean(diff)},
          {"ln_ppl_ratio_stderr", stderr_of_mean(diff)}};
}

}  // namespace kldq::eval
