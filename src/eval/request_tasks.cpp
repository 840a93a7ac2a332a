// `kldq eval --tasks`: zero-shot multiple-choice tasks, their metrics, items/s and flips.
#include "request_tasks.hpp"

#include <fmt/format.h>

#include "kldq/core/clock.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"

namespace kldq::eval {

TaskInputs read_tasks(const EvalRequest& o, const io::Tokenizer& tok, int64_t max_ctx,
                      int64_t vocab) {
  TaskInputs in;
  if (o.tasks.empty()) return in;
  if (o.tasks_dir.empty())
    throw ConfigError("--tasks: needs --tasks-dir (where the task files are)");
  in.options.batch = o.batch;
  in.options.max_len = max_ctx;
  for (const std::string& name : parse_task_list(o.tasks, o.tasks_dir, "--tasks")) {
    in.tasks.push_back(load_task(name, o.tasks_dir, o.tasks_limit));
    for (const TaskItem& it : in.tasks.back().items)
      in.max_choices = std::max<int64_t>(in.max_choices, int64_t(it.contexts.size()));
    in.tokens.push_back(tokenize_task(tok, in.tasks.back(), max_ctx, vocab));
    const TaskTokens& t = in.tokens.back();
    for (size_t i = 0; i < t.longest.size(); ++i) {
      in.max_tokens = std::max(in.max_tokens, t.longest[i]);
      in.max_shared = std::max(in.max_shared, t.shared[i]);
      in.max_rest = std::max(in.max_rest, t.longest[i] - t.shared[i]);
    }
    in.ref.emplace_back();
    if (!o.reference_task_predictions.empty()) {
      in.ref.back() = read_task_predictions(o.reference_task_predictions, name);
      if (in.ref.back()->size() != in.tasks.back().items.size())
        throw ConfigError(
            fmt::format("--reference-task-predictions {}: {} rows of {}, this run "
                        "scores {} items (the same --tasks-limit?)",
                        o.reference_task_predictions, in.ref.back()->size(), name,
                        in.tasks.back().items.size()));
    }
  }
  return in;
}

std::string run_tasks(const TaskInputs& in, const EvalRequest& o, const model::Decoder& m,
                      const model::Decoder* ref, const std::string& pred_path, TaskMetrics& out,
                      std::string& summary) {
  std::string predictions;
  nlohmann::json files = nlohmann::json::object();
  const auto t0 = Clock::now();
  for (size_t k = 0; k < in.tasks.size(); ++k) {
    const Task& t = in.tasks[k];
    log::info("eval: {} ({} items of {})", t.name, t.items.size(), t.path.string());
    const auto t1 = Clock::now();
    const auto preds = score_task(m, t, in.tokens[k], in.options.batch, t.name);
    device_synchronize(m.device());
    const double secs = seconds_since(t1);
    nlohmann::json r = task_summary(t, preds);
    r["seconds"] = secs;
    r["items_per_second"] = double(preds.size()) / secs;
    // The reference's predictions: saved ones, else scored here when there is a reference.
    std::optional<std::vector<TaskPrediction>> scored;
    const std::vector<TaskPrediction>* rp = in.ref[k] ? &*in.ref[k] : nullptr;
    if (!rp && ref)
      rp = &scored.emplace(
          score_task(*ref, t, in.tokens[k], in.options.batch, t.name + " reference"));
    if (rp)
      r.update(task_flips(
          t, *rp, preds,
          o.reference_task_predictions.empty() ? "reference" : o.reference_task_predictions));
    summary += fmt::format("{} acc {:.4f}", t.name, r["acc"].get<double>());
    if (r.contains("acc_norm"))
      summary += fmt::format(", acc_norm {:.4f}", r["acc_norm"].get<double>());
    summary += fmt::format(" over {} items ({:.0f} items/s)", preds.size(),
                           r["items_per_second"].get<double>());
    if (r.contains("flip_rate"))
      summary += fmt::format("; flips {:.4f}", r["flip_rate"].get<double>());
    summary += "\n";
    out.tasks[t.name] = r;
    files[t.name] = {{"path", t.path.string()}, {"sha256", t.sha256}, {"n", t.items.size()}};
    predictions += task_predictions_jsonl(t, preds);
  }
  out.seconds_tasks = seconds_since(t0);
  out.settings = {{"dir", o.tasks_dir},
                  {"limit", o.tasks_limit},
                  {"max_len", in.options.max_len},
                  {"files", files},
                  {"predictions", pred_path}};
  return predictions;
}

}  // namespace kldq::eval
