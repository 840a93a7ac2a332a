// Per-question MMLU predictions as JSONL (so later runs compute flips without re-running the
// reference) and answer flips against a reference's predictions (docs/PROTOCOLS.md, "Flips").
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "kldq/eval/mmlu.hpp"

namespace kldq::eval {

// One JSON object per line: subject, index, answer and pred (letters), correct, logprobs of
// A-D, truncated, and `protocol` ("5shot:5", "chat0shot:0").
std::string predictions_jsonl(const std::vector<MmluPrediction>& preds,
                              const std::string& protocol);
// Reads a file written by predictions_jsonl; IoError naming the file and line when malformed.
// `protocol`: the protocol of the rows.
std::vector<MmluPrediction> read_predictions(const std::filesystem::path& path,
                                             std::string* protocol);
// The same from text; errors name `where` and the line.
std::vector<MmluPrediction> parse_predictions(const std::string& text, const std::string& where,
                                              std::string* protocol);

// One question's gold answer and prediction, as flips compare them.
struct Answered {
  int answer = 0, pred = 0;
};
// flip_rate (correctness changed), answer_change_rate (prediction changed), c2w and w2c counts,
// each rate with its 95 % Wilson interval (`*_ci`: [low, high]), and the reference's accuracy
// under `acc_ref_key`; `ref` and `m` are the same questions in the same order.
nlohmann::json flip_rates(const std::vector<Answered>& ref, const std::vector<Answered>& m,
                          const std::string& acc_ref_key);

// flip_rates of MMLU predictions and the reference's accuracy (mmlu_acc_ref). ConfigError naming
// `what` when the two lists are not the same questions in the same order with the same answers.
nlohmann::json flip_summary(const std::vector<MmluPrediction>& reference,
                            const std::vector<MmluPrediction>& model, const std::string& what);

}  // namespace kldq::eval
