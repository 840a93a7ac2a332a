// Zero-shot multiple-choice tasks as lm-evaluation-harness runs them (docs/PROTOCOLS.md,
// "Zero-shot tasks"): ARC-Easy/Challenge, HellaSwag, PIQA, WinoGrande, BoolQ, OpenBookQA from
// their files as published, plus a generic JSONL form; lm-eval's prompts, tokenization of
// context/continuation pairs, log-likelihood scoring with each item's shared context run once
// into a KV cache, acc and acc_norm, per-item predictions and flips against a reference.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::eval {

// One item: for each choice c the context and continuation lm-eval scores (the continuation
// starts with the target delimiter " "; WinoGrande: one context per option, one continuation).
struct TaskItem {
  int64_t index = 0;  // 0-based item in the file
  std::vector<std::string> contexts, continuations;
  std::vector<int64_t> choice_chars;  // code points of each choice string (acc_norm)
  int gold = 0;
};

struct Task {
  std::string name;
  std::filesystem::path path;  // the (first) file read
  bool has_norm = true;        // defines acc_norm (WinoGrande and BoolQ do not)
  std::vector<TaskItem> items;
  std::string sha256;  // of the file(s) read, in order
};

// The built-in task names, in the order reports list them.
const std::vector<std::string>& builtin_tasks();
// "arc_easy,piqa" -> names, checked: built-in, or NAME.jsonl (generic form) in `dir`. ConfigError
// naming `option` for an unknown or repeated name.
std::vector<std::string> parse_task_list(const std::string& list, const std::filesystem::path& dir,
                                         const char* option);
// The files task `name` reads from `dir` (a built-in task's as published, else NAME.jsonl).
std::vector<std::filesystem::path> task_files(const std::string& name,
                                              const std::filesystem::path& dir);
// Reads task `name` from `dir` (its files as published: docs/PROTOCOLS.md), the first `limit`
// items (0: all). IoError naming the file and line of a malformed row; ConfigError for a missing
// file.
Task load_task(const std::string& name, const std::filesystem::path& dir, int64_t limit);

struct TaskOptions {
  int64_t batch = 1;    // items per forward
  int64_t max_len = 0;  // input tokens kept (lm-eval's left truncation); the model's context
};

struct TaskPrediction {
  int64_t index = 0;
  int gold = 0, pred = 0, pred_norm = 0;  // argmax of loglik and of loglik / chars (first on ties)
  std::vector<double> loglik;             // per choice: sum of the continuation's log-probs
  bool truncated = false;
};

// The token ids lm-eval feeds for each (context, continuation): trailing whitespace of the
// context moved to the continuation; encode(context + continuation) and encode(context) with the
// tokenizer's own special tokens (a BOS for Llama, none for Qwen2); the continuation is the
// joint encoding past the context's length. Returns {context tokens, continuation tokens}.
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const io::Tokenizer& tok,
                                                                  const std::string& context,
                                                                  const std::string& continuation);

// One choice to score: the input lm-eval feeds (context + continuation without its last token,
// cut from the left to max_len) and the continuation's tokens, predicted by the last positions.
struct TaskRequest {
  size_t item = 0;
  int choice = 0;
  std::vector<int32_t> ids, targets;
};

// Every choice of a task tokenized (before any model loads: its errors come first, and its
// lengths size the memory estimate).
struct TaskTokens {
  std::vector<TaskRequest> reqs;
  std::vector<std::vector<size_t>> by_item;  // the requests of each item
  std::vector<int64_t> longest;              // per item: its longest input
  std::vector<int64_t> shared;  // per item: the token prefix its inputs share (run once, cached)
  std::vector<bool> truncated;  // per item: an input was cut
};

// encode_pair for every choice (the encodings on the tokenizer's worker threads: encode_all),
// inputs cut from the left to `max_len` (the model's context).
// ConfigError naming the task and item for a continuation of no token or more than `max_len`,
// or a token id outside `vocab`.
TaskTokens tokenize_task(const io::Tokenizer& tok, const Task& task, int64_t max_len,
                         int64_t vocab);

// Scores every item of `task` from its tokens, `batch_items` items per forward. Draws a progress
// bar labelled `label`.
std::vector<TaskPrediction> score_task(const model::Decoder& model, const Task& task,
                                       const TaskTokens& tokens, int64_t batch_items,
                                       const std::string& label);
// tokenize_task then score_task with options' batch and max_len.
std::vector<TaskPrediction> score_task(const model::Decoder& model, const io::Tokenizer& tok,
                                       const Task& task, const TaskOptions& options,
                                       const std::string& label);

// {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr" (when defined), "n", "truncated"}.
nlohmann::json task_summary(const Task& task, const std::vector<TaskPrediction>& preds);

// The prediction flips compare: acc_norm's where the task defines it, else acc's.
int headline_pred(const Task& task, const TaskPrediction& p);

// One JSON object per line: task, index, gold, pred, pred_norm, loglik, truncated.
std::string task_predictions_jsonl(const Task& task, const std::vector<TaskPrediction>& preds);
// The rows of `task` in a file written by task_predictions_jsonl (rows of other tasks skipped);
// IoError naming the file and line when malformed.
std::vector<TaskPrediction> read_task_predictions(const std::filesystem::path& path,
                                                  const std::string& task);

// Flips of the headline prediction (flip_rates) and the reference's headline accuracy
// (acc_norm_ref, or acc_ref). ConfigError naming `what` when the lists are not the same items.
nlohmann::json task_flips(const Task& task, const std::vector<TaskPrediction>& reference,
                          const std::vector<TaskPrediction>& model, const std::string& what);

}  // namespace kldq::eval
