// Perplexity and KL divergence against a reference model on the same token windows, under the
// three protocols of docs/PROTOCOLS.md ("Perplexity", "KL divergence"): gptq, llamacpp, sliding.
// Per-token values are computed in fp32 from the final hidden states a chunk of positions at a
// time (LM head + log-softmax; never a [tokens x vocab] tensor for a whole window or the whole
// set) and summarised in double precision.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "kldq/core/shard.hpp"
#include "kldq/core/vocabulary.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::eval {

enum class PplProtocol { GPTQ, LLAMACPP, SLIDING };
inline constexpr Vocabulary<PplProtocol, 3> kPplProtocols{"protocol",
                                                          {{{PplProtocol::GPTQ, "gptq"},
                                                            {PplProtocol::LLAMACPP, "llamacpp"},
                                                            {PplProtocol::SLIDING, "sliding"}}}};
// "gptq", "llamacpp", "sliding"; ConfigError naming `option` otherwise.
PplProtocol parse_ppl_protocol(const std::string& name, const char* option);
const char* ppl_protocol_name(PplProtocol p);

struct PplOptions {
  PplProtocol protocol = PplProtocol::GPTQ;
  int64_t ctx = 2048;    // window length (capped by the model's context by the caller)
  int64_t stride = 0;    // sliding: tokens the window advances (0: ctx / 2)
  int32_t bos = -1;      // llamacpp: id written over each window's first token (-1: none)
  int64_t batch = 1;     // windows per forward
  int64_t chunk = 1024;  // positions per LM head + fp32 log-softmax
  Shard shard;           // only the batches with index % n == i (eval::merge_shards)
};

// One window: tokens [begin, begin + length) of the stream; positions score_from .. length-2
// predict tokens score_from+1 .. length-1 of the window.
struct Window {
  int64_t begin = 0, length = 0, score_from = 0;
};
// The protocol's windows over a stream of n tokens (empty when the stream is shorter than ctx
// for gptq/llamacpp, or shorter than 2 tokens for sliding).
std::vector<Window> make_windows(int64_t n_tokens, const PplOptions& options);

// Per-token results of one model (and of the reference when given), in window order.
struct TokenScores {
  std::vector<double> nll;      // -log p_model(next token)
  std::vector<double> nll_ref;  // reference, when evaluated
  std::vector<double> kl;       // KL(P_ref || P_model) per token
  std::vector<uint8_t> same_top1;
  int64_t windows = 0;
  struct Scored {
    int64_t window = 0, tokens = 0;  // index in the window list; its scored tokens
  };
  std::vector<Scored> scored;  // the windows scored, in order (a shard's are some of them)
};

// Scores `windows` of `tokens` (consecutive windows of equal shape share a forward, up to
// options.batch). `reference` may be null (no KL). Draws a progress bar. With a shard, the
// batches are formed from all windows as without one, and only the shard's are run: each
// window's scores are then bit-identical to the whole run's.
TokenScores score_windows(const model::Decoder& model, const model::Decoder* reference,
                          const std::vector<int32_t>& tokens, const std::vector<Window>& windows,
                          const PplOptions& options);

// {"ppl", "nll_mean", "tokens", "windows"} of a list of per-token NLLs; keys get `suffix`.
nlohmann::json ppl_summary(const std::vector<double>& nll, int64_t windows,
                           const std::string& suffix = "");
// KL statistics: kl_mean ± kl_stderr, kl_median, kl_p90/p95/p99/p99_9 (linear interpolation
// between order statistics, numpy's default), kl_max, top1_agree, dp_mean and dp_rms of
// Δp = p_model - p_ref of the actual next token, and ln_ppl_ratio = ln(PPL_model / PPL_ref)
// with ln_ppl_ratio_stderr from the per-token differences (which accounts for the correlation
// of the two models' NLLs).
nlohmann::json kl_summary(const TokenScores& scores);

}  // namespace kldq::eval
