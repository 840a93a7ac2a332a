// `kldq eval` as a library task: perplexity, KL, MMLU with flips, zero-shot tasks and decode speed
// of a checkpoint (quantized in memory by a plan or a base format when asked) against a reference,
// written as metrics JSON with the predictions beside it (docs/PROTOCOLS.md); or shard metrics
// merged into one run's. The experiment runner's reference and point evaluations call it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "kldq/eval/metrics.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/perplexity.hpp"
#include "kldq/model/compute.hpp"
#include "kldq/quant/resolve.hpp"

namespace kldq::eval {

struct EvalRequest {
  std::string model, reference, base, plan, ppl, out;
  PplProtocol ppl_protocol = PplProtocol::GPTQ;  // kPplProtocols
  std::string mmlu, predictions, reference_predictions;
  MmluProtocol mmlu_protocol = MmluProtocol::FEWSHOT;  // kMmluProtocols
  std::string tasks, tasks_dir, task_predictions, reference_task_predictions;
  std::string shard;               // "i/n" (eval/merge.hpp)
  std::vector<std::string> merge;  // shard metrics to merge instead of evaluating
  int64_t ctx = 0, stride = 0, batch = 8, mmlu_limit = 0,
          tasks_limit = 0;  // batch: as an experiment's eval
  int shots = -1;
  bool kld = false;
  bool speed = false;           // prefill and decode tokens/s (eval/speed.hpp)
  bool mmlu_unshared = false;   // every MMLU prompt run whole (benchmarks of the shared prefix)
  quant::MethodRequest method;  // quantization in memory (--base, --plan): method and calibration
  model::ComputeOptions compute;
};
struct EvalReport {
  Metrics metrics;      // as written to `out`
  std::string summary;  // the lines the command prints: perplexity and KL, MMLU, tasks, speed
};
// Evaluates `r.model` into `r.out` (metrics JSON) and the MMLU and task predictions beside it,
// or merges `r.merge`'s shards when given. Every option and input is checked before any model
// loads (ConfigError naming the option); no partial output.
EvalReport evaluate(const EvalRequest& r);

}  // namespace kldq::eval
