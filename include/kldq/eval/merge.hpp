// Evaluation shards (`kldq eval --shard i/n`) and their merge (`kldq eval --merge`). A shard
// scores the perplexity windows' batches with index % n == i (formed from all windows, so each
// window's scores are the whole run's) and the MMLU subjects with index % n == i (a subject's
// batches are its own, so its predictions are the whole run's); it records its per-token scores
// and predictions under "shard_data". The merge puts them back in order and computes every
// summary with the functions one run uses: the metrics one run writes.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "kldq/core/shard.hpp"
#include "kldq/eval/metrics.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/perplexity.hpp"

namespace kldq::eval {

// "shard_data.ppl": the windows scored ([[window, tokens], ...]) and the per-token nll (and, with
// a reference, nll_ref, kl, same_top1, empty when the shard has no window), in window order.
nlohmann::json ppl_shard_data(const TokenScores& s, bool with_reference);
// "shard_data.mmlu": the predictions (and the reference's, with what they came from) as JSONL
// text, and the subjects of the whole run.
nlohmann::json mmlu_shard_data(const std::vector<MmluPrediction>& predictions,
                               const std::vector<MmluPrediction>* reference,
                               const std::string& reference_what, const std::string& protocol,
                               size_t subjects);

struct MergedEval {
  Metrics metrics;
  std::string predictions_jsonl;  // MMLU's, in question order ("" without MMLU)
};
// The shards' metrics merged. ConfigError naming the files when they are not the shards of one
// evaluation (core/shard.hpp's check_shards over the keys that say what was evaluated: version,
// models, quantization and method settings, dtype, device type, batch, the data and protocols,
// the memory report), or when their windows or subjects do not cover the run exactly once.
MergedEval merge_shards(const std::vector<ShardFile>& files);

}  // namespace kldq::eval
