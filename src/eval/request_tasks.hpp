// The zero-shot tasks of `kldq eval --tasks` (docs/PROTOCOLS.md, "Zero-shot tasks"): read and
// checked before any model loads, then scored on the model and its reference with flips.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "kldq/eval/evaluate.hpp"
#include "kldq/eval/metrics.hpp"
#include "kldq/eval/tasks.hpp"

namespace kldq::eval {

struct TaskInputs {
  std::vector<Task> tasks;
  std::vector<TaskTokens> tokens;  // per task
  // Per task: the reference's predictions read from --reference-task-predictions, if given.
  std::vector<std::optional<std::vector<TaskPrediction>>> ref;
  TaskOptions options;
  // Over every item, for the memory estimate: the most choices, the longest input, the longest
  // shared prefix and the longest input past its item's shared prefix.
  int64_t max_choices = 0, max_tokens = 0, max_shared = 0, max_rest = 0;
};

// Reads --tasks from --tasks-dir (and --reference-task-predictions) and tokenizes them; `max_ctx`
// and `vocab`: the models' context and vocabulary. Empty when --tasks is not given.
TaskInputs read_tasks(const EvalRequest& o, const io::Tokenizer& tok, int64_t max_ctx,
                      int64_t vocab);

// Scores every task on `m` (and `ref` when given and no saved reference predictions) into `out`
// and returns the predictions JSONL. `summary` gets one line per task.
std::string run_tasks(const TaskInputs& in, const EvalRequest& o, const model::Decoder& m,
                      const model::Decoder* ref, const std::string& pred_path, TaskMetrics& out,
                      std::string& summary);

}  // namespace kldq::eval
