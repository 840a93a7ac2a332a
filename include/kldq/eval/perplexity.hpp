// Perplexity and KL divergence against a reference model on the same token windows
// (docs/PROTOCOLS.md, "Perplexity" and "KL divergence"). Per-token values are computed in fp32
// from logits chunk by chunk (never a [tokens x vocab] tensor for the whole set) and summarised
// in double precision.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

#include "kldq/model/decoder.hpp"

namespace kldq::eval {

struct PplOptions {
  int64_t ctx = 2048;    // window length (capped by the model's context by the caller)
  int64_t batch = 1;     // windows per forward
  int64_t chunk = 1024;  // positions per fp32 log-softmax
};

// Per-token results of one model (and of the reference when given), in window order.
struct TokenScores {
  std::vector<double> nll;      // -log p_model(next token)
  std::vector<double> nll_ref;  // reference, when evaluated
  std::vector<double> kl;       // KL(P_ref || P_model) per token
  std::vector<uint8_t> same_top1;
  int64_t windows = 0;
};

// `gptq` protocol: non-overlapping windows of ctx tokens (the remainder shorter than a window is
// dropped, as GPTQ's evaluation does); in each window, positions 0..ctx-2 predict 1..ctx-1.
// `reference` may be null (no KL).
TokenScores score_windows(const model::Decoder& model, const model::Decoder* reference,
                          const std::vector<int32_t>& tokens, const PplOptions& options);

// {"tokens", "windows", "nll_mean", "ppl"} of a list of per-token NLLs.
nlohmann::json ppl_summary(const std::vector<double>& nll, int64_t windows);
// KL statistics: mean ± stderr, median, p90/p95/p99/p99.9 (linear interpolation between order
// statistics, numpy's default), max, same-top-1 rate, mean and RMS of Δp = p_model - p_ref of the
// actual next token, and ln(PPL_model / PPL_ref) with its standard error from the per-token
// differences (which accounts for the correlation of the two models' NLLs).
nlohmann::json kl_summary(const TokenScores& scores);

}  // namespace kldq::eval
