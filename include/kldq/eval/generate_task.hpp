// `kldq generate` as a library task: text from a checkpoint as it is or quantized in memory, with
// the KV cache (eval/generate.hpp), from one prompt or a JSONL file of prompts (text or token
// ids), greedy or sampled, optionally in the model's ChatML format.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "kldq/eval/generate.hpp"
#include "kldq/model/compute.hpp"
#include "kldq/quant/resolve.hpp"

namespace kldq::eval {

struct GenerateRequest {
  std::string model, base, plan, prompt, prompts, out;  // --prompt TEXT or --prompts FILE
  int64_t max_new_tokens = 128, batch = 16;
  Sampling sampling;
  bool chat = false, ignore_eos = false, no_cuda_graph = false;
  quant::MethodRequest method;  // quantization in memory (--base, --plan)
  model::ComputeOptions compute;
};
struct GenerateReport {
  std::string lines;      // one JSON line per prompt: prompt, tokens, text, stop
  bool streamed = false;  // the text went to on_text instead (one prompt, no `out`)
  size_t prompts = 0;
  int64_t rows = 0;  // prompts per batch
  GenerateStats stats;
};
// Generates for every prompt of `r`; writes the lines to `r.out` when given. With one prompt, no
// `out` and `on_text` set, the text is passed to on_text as it grows (ending with a newline).
GenerateReport generate_texts(const GenerateRequest& r,
                              const std::function<void(const std::string&)>& on_text = {});

}  // namespace kldq::eval
