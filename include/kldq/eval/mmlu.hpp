// MMLU (docs/PROTOCOLS.md, "MMLU"): loading the data (a directory of dev/ and test/ CSVs in the
// Hugging Face export or the original Hendrycks layout, or a JSONL file), the two prompt
// protocols (lm-evaluation-harness k-shot and the reference project's ChatML 0-shot), and
// batched scoring of the four answers' log-likelihoods.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kldq/core/vocabulary.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::eval {

struct MmluItem {
  std::string subject;  // file stem without _dev/_test ("abstract_algebra")
  int64_t index = 0;    // 0-based position within the subject's split
  std::string question;
  std::array<std::string, 4> choices;
  int answer = 0;  // 0..3
};

struct MmluData {
  std::map<std::string, std::vector<MmluItem>> dev, test;  // by subject, sorted by name
};

// A directory with test/*_test.csv (and dev/*_dev.csv), each file with or without the header
// `question,choice0,choice1,choice2,choice3,answer` (answer 0-3 with it, A-D without), or a
// JSONL file of {"subject", "question", "choices": [4], "answer": 0-3 or "A"-"D", optional
// "split": "dev"|"test"}. IoError naming the file and line for a malformed row.
MmluData load_mmlu(const std::filesystem::path& path);

enum class MmluProtocol { FEWSHOT, CHAT0SHOT };
inline constexpr Vocabulary<MmluProtocol, 2> kMmluProtocols{
    "protocol", {{{MmluProtocol::FEWSHOT, "5shot"}, {MmluProtocol::CHAT0SHOT, "chat0shot"}}}};
// "5shot" or "chat0shot"; ConfigError naming `option` otherwise.
MmluProtocol parse_mmlu_protocol(const std::string& name, const char* option);

struct MmluOptions {
  MmluProtocol protocol = MmluProtocol::FEWSHOT;
  int shots = 5;        // dev examples per prompt (FEWSHOT)
  int64_t limit = 0;    // first N test items in subject order (0: all)
  int64_t batch = 1;    // prompts per forward
  int64_t max_len = 0;  // prompt tokens kept (left truncation); the model's context
  // Each subject's common token prefix runs once into a KV cache and the rest of every prompt
  // as its continuation (the same positions and tokens; false: every prompt whole).
  bool shared_prefix = true;
};

// The test items scored, in subject order, after `limit`. ConfigError when there are none, or
// when a subject has fewer dev items than `shots` (FEWSHOT).
std::vector<MmluItem> mmlu_items(const MmluData& data, const MmluOptions& options);
// The prompt text of one test item, ending where the answer letter follows.
std::string mmlu_prompt(const MmluData& data, const MmluItem& item, const MmluOptions& options);
// The text that follows the prompt for each letter: " A".." D" (FEWSHOT) or "A".."D".
std::array<std::string, 4> mmlu_continuations(MmluProtocol protocol);

// The tokens each answer adds after a prompt: encode(prompt + continuation) minus the tokens of
// encode(prompt), which must be a prefix of it. Every prompt of a protocol ends with the same
// text ("Answer:" or the opened assistant turn), so the first item's prompt decides for all.
// ConfigError naming the tokenizer when an answer adds no token or changes the prompt's tokens.
using AnswerTokens = std::array<std::vector<int32_t>, 4>;
AnswerTokens mmlu_answer_tokens(const io::Tokenizer& tokenizer, const MmluData& data,
                                const MmluItem& first, const MmluOptions& options);

struct MmluPrediction {
  std::string subject;
  int64_t index = 0;
  int answer = 0;
  int pred = 0;  // argmax of logprobs (first on ties)
  // Log-likelihood of each answer's tokens (fp32 log-softmax over the vocabulary, summed over
  // the answer's tokens when it has several).
  std::array<double, 4> logprobs{};
  bool truncated = false;  // the prompt was cut from the left to max_len tokens
};

// Scores `items` with `model`: prompts tokenized without special tokens, the tokens every
// sequence of a subject starts with (its few-shot prefix) run once when `shared_prefix`, the
// rest sorted by length and right-padded in batches (causal attention: padding after the last real
// token cannot change it, so results do not depend on the batch size). When every answer is one
// token, one sequence per question gives all four log-probabilities at its last position; otherwise
// each answer is scored as its own sequence (prompt + answer tokens), as lm-evaluation-harness
// does. Draws a progress bar labelled `label`.
std::vector<MmluPrediction> score_mmlu(const model::Decoder& model, const io::Tokenizer& tokenizer,
                                       const MmluData& data, const std::vector<MmluItem>& items,
                                       const AnswerTokens& answers, const MmluOptions& options,
                                       const std::string& label);

}  // namespace kldq::eval
