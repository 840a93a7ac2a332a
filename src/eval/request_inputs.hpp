// The data of `kldq eval` (perplexity windows, MMLU questions, zero-shot tasks, saved reference
// predictions): options resolved, files read, tokenized and checked before any model is loaded.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kldq/eval/evaluate.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "request_tasks.hpp"

namespace kldq::eval {

// The evaluation data, read and checked before any model is loaded.
struct Inputs {
  PplOptions ppl;
  std::vector<int32_t> tokens;
  std::vector<Window> windows;
  MmluOptions mmlu;
  MmluData mmlu_data;
  std::vector<MmluItem> items;
  AnswerTokens answers;
  std::string mmlu_tag;      // "5shot:5"
  size_t mmlu_subjects = 0;  // of the whole run (shard_inputs)
  std::optional<std::vector<MmluPrediction>> ref_predictions;
  std::string ppl_sha256, mmlu_sha256;  // hashed before any model runs
  TaskInputs tasks;
};

// Protocol settings from the options alone (errors before any file is read); `max_ctx`: the
// models' context.
Inputs settings_from(const EvalRequest& o, int64_t max_ctx);
// Reads, tokenizes and checks the perplexity text and MMLU (with saved reference predictions).
void read_data(const EvalRequest& o, const io::Tokenizer& tok, Inputs& in);
// Token ids the models have embeddings for: a tokenizer with more added tokens than the model's
// vocabulary would otherwise index out of range on the device.
void check_vocabulary(const Inputs& in, int64_t vocab);
// A shard's inputs (eval/merge.hpp): the perplexity batches with index % n == i (in.ppl.shard)
// and the MMLU questions (and saved reference predictions) of the subjects with index % n == i;
// in.mmlu_subjects: the subjects of the whole run.
void shard_inputs(const Shard& shard, Inputs& in);

}  // namespace kldq::eval
