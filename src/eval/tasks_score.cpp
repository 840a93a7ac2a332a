// Scoring the zero-shot tasks as lm-evaluation-harness does (docs/PROTOCOLS.md, "Zero-shot
// tasks"): each choice's continuation log-likelihood given its context, with a batch of items'
// shared contexts run once into a KV cache and every choice continuing its item's cache row.
//
//   item 0 (4 choices)     prefix: [ctx tokens shared by its choices] -> cache row 0
//   item 1 (2 choices)     prefix: [pad pad ... shared tokens        ] -> cache row 1
//   continuations: 6 rows, right-padded, row r attending over cache row item(r)
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/eval/loglik.hpp"
#include "kldq/eval/stats.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::eval {
namespace {

// Python's str.isspace: Unicode White_Space plus the separators U+001C-U+001F.
bool py_space(char32_t c) {
  return io::unicode::is_space(c) || (c >= 0x1C && c <= 0x1F);
}

// Requests of one batch of items: shared prefixes run once (left-padded to one length), each
// request's remaining tokens as a continuation of its item's row. Adds each request's
// log-likelihood to `out`.
void score_batch(const model::Decoder& m, const std::vector<TaskRequest>& reqs,
                 const std::vector<int64_t>& shared,
                 const std::vector<std::vector<size_t>>& by_item,
                 std::vector<TaskPrediction>& out) {
  std::vector<ScoredSequence> seqs;
  std::vector<int64_t> rows, skip_of_item, targets;
  int64_t Lp = 0, T = 0;
  for (size_t b = 0; b < by_item.size(); ++b) {
    skip_of_item.push_back(shared[reqs[by_item[b].front()].item]);
    Lp = std::max(Lp, skip_of_item.back());
    for (size_t r : by_item[b]) {
      const TaskRequest& q = reqs[r];
      seqs.push_back({&q.ids, skip_of_item.back(), static_cast<int64_t>(q.targets.size())});
      T = std::max<int64_t>(T, static_cast<int64_t>(q.ids.size()) - skip_of_item.back());
      rows.push_back(static_cast<int64_t>(b));
      targets.insert(targets.end(), q.targets.begin(), q.targets.end());
    }
  }
  // Left-padded prefixes and right-padded continuations span Lp + T columns, more than any one
  // sequence: past the model's context, the batch runs its sequences whole instead.
  if (Lp + T > m.config().max_position_embeddings) {
    for (ScoredSequence& s : seqs) s.skip = 0;
    Lp = 0;
  }
  std::optional<model::Decoder::KvCache> cache;
  if (Lp > 0) {
    const int64_t B = static_cast<int64_t>(by_item.size());
    std::vector<int64_t> pad, flat(static_cast<size_t>(B * Lp), 0);  // [B, Lp] left-padded ids
    for (int64_t b = 0; b < B; ++b) {
      const int64_t P = skip_of_item[size_t(b)];
      pad.push_back(Lp - P);
      const std::vector<int32_t>& ids = reqs[by_item[size_t(b)].front()].ids;
      std::copy(ids.begin(), ids.begin() + P, flat.begin() + b * Lp + (Lp - P));
    }
    model::Decoder::KvCache prefix = m.new_cache(pad, Lp + T);
    m.run_cached(at::tensor(flat).view({B, Lp}), prefix);
    cache = expand_cache(m, prefix, rows, Lp + T);
  }
  const at::Tensor picked =  // [R, 1]: each scored position's log-probability of its target
      scored_logprobs(m, seqs, {cache ? &*cache : nullptr}, at::tensor(targets).view({-1, 1}));
  const double* v = picked.data_ptr<double>();
  size_t row = 0;
  for (const auto& item : by_item)
    for (size_t r : item) {
      double sum = 0;  // the continuation's log-likelihood: sum over its tokens
      for (size_t k = 0; k < reqs[r].targets.size(); ++k) sum += v[row++];
      if (!std::isfinite(sum))  // NaN or inf from the model: no argmax means anything
        throw IoError(
            fmt::format("item {} choice {}: the model's log-likelihood is {} (its "
                        "outputs are not finite)",
                        reqs[r].item, reqs[r].choice, sum));
      out[reqs[r].item].loglik[size_t(reqs[r].choice)] = sum;
    }
}

// First index of the maximum (numpy.argmax's tie rule).
int argmax(const std::vector<double>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

// lm-eval's split of a (context, continuation): the context's trailing whitespace moved to the
// continuation. Returns the two texts it encodes: {context, context + continuation}.
std::pair<std::string, std::string> pair_texts(const std::string& context,
                                               const std::string& continuation) {
  const std::u32string c = io::unicode::decode_utf8(context);
  size_t n = c.size();
  while (n > 0 && py_space(c[n - 1])) --n;
  const std::string ctx = io::unicode::encode_utf8(c.substr(0, n));
  return {ctx, ctx + io::unicode::encode_utf8(c.substr(n)) + continuation};
}

// {context tokens, continuation tokens}: the joint encoding past the context's length.
std::pair<std::vector<int32_t>, std::vector<int32_t>> split_ids(std::vector<int32_t> ctx_ids,
                                                                const std::vector<int32_t>& whole) {
  const size_t k = std::min(ctx_ids.size(), whole.size());
  return {std::move(ctx_ids), std::vector<int32_t>(whole.begin() + long(k), whole.end())};
}

}  // namespace

std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const io::Tokenizer& tok,
                                                                  const std::string& context,
                                                                  const std::string& continuation) {
  const auto [ctx, whole] = pair_texts(context, continuation);
  return split_ids(tok.encode(ctx, true), tok.encode(whole, true));
}

TaskTokens tokenize_task(const io::Tokenizer& tok, const Task& task, int64_t max_len,
                         int64_t vocab) {
  check(max_len >= 1, "tokenize_task: bad max_len");
  TaskTokens t;
  t.by_item.resize(task.items.size());
  t.longest.assign(task.items.size(), 0);
  t.truncated.assign(task.items.size(), false);
  // encode_pair's two encodings of every choice, on the tokenizer's worker threads
  std::vector<std::string> texts;
  for (const TaskItem& it : task.items)
    for (size_t c = 0; c < it.contexts.size(); ++c) {
      auto [ctx, whole] = pair_texts(it.contexts[c], it.continuations[c]);
      texts.push_back(std::move(ctx));
      texts.push_back(std::move(whole));
    }
  std::vector<std::vector<int32_t>> encoded = tok.encode_all(texts, true);
  size_t next = 0;
  for (size_t i = 0; i < task.items.size(); ++i) {
    const TaskItem& it = task.items[i];
    for (size_t c = 0; c < it.contexts.size(); ++c, next += 2) {
      auto [ids, cont] = split_ids(std::move(encoded[next]), encoded[next + 1]);
      if (ids.empty())  // nothing to condition on (lm-eval cannot score this either)
        throw ConfigError(fmt::format("{}: item {} choice {}: the context has no tokens",
                                      task.path.string(), it.index, c));
      if (cont.empty() || static_cast<int64_t>(cont.size()) > max_len)
        throw ConfigError(fmt::format(
            "{}: item {} choice {}: the continuation has {} tokens (1 to {} can be scored)",
            task.path.string(), it.index, c, cont.size(), max_len));
      for (const auto* v : {&ids, &cont})  // out-of-range ids would index past the embedding
        for (int32_t id : *v)
          if (id < 0 || id >= vocab)
            throw ConfigError(
                fmt::format("{}: item {}: the tokenizer produced token id {}, outside "
                            "the model's vocabulary of {}",
                            task.path.string(), it.index, id, vocab));
      ids.insert(ids.end(), cont.begin(), cont.end() - 1);  // lm-eval: (ctx + cont)[:-1]
      if (static_cast<int64_t>(ids.size()) > max_len) {     // ... keeping the last max_len
        ids.erase(ids.begin(), ids.end() - max_len);
        t.truncated[i] = true;
      }
      t.longest[i] = std::max<int64_t>(t.longest[i], static_cast<int64_t>(ids.size()));
      t.by_item[i].push_back(t.reqs.size());
      t.reqs.push_back({i, static_cast<int>(c), std::move(ids), std::move(cont)});
    }
    std::vector<ScoredSequence> own;  // the item's inputs, each scoring its continuation
    for (size_t r : t.by_item[i])
      own.push_back({&t.reqs[r].ids, 0, static_cast<int64_t>(t.reqs[r].targets.size())});
    t.shared.push_back(common_prefix(own));
  }
  return t;
}

std::vector<TaskPrediction> score_task(const model::Decoder& m, const Task& task,
                                       const TaskTokens& t, int64_t batch_items,
                                       const std::string& label) {
  check(batch_items >= 1 && t.by_item.size() == task.items.size() &&
            t.shared.size() == task.items.size(),
        "score_task: bad arguments");
  std::vector<TaskPrediction> out(task.items.size());
  for (size_t i = 0; i < task.items.size(); ++i) {
    out[i].index = task.items[i].index, out[i].gold = task.items[i].gold;
    out[i].loglik.assign(task.items[i].contexts.size(), 0.0);
    out[i].truncated = t.truncated[i];
  }
  // Longest items first, so a batch's padding is small and memory peaks at the start.
  std::vector<size_t> order(task.items.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return t.longest[a] > t.longest[b]; });
  at::InferenceMode guard;
  Progress progress(label, static_cast<int64_t>(order.size()), "items");
  for (const auto [b, n] : batches(static_cast<int64_t>(order.size()), batch_items)) {
    std::vector<std::vector<size_t>> batch;
    for (int64_t k = b; k < b + n; ++k) batch.push_back(t.by_item[order[static_cast<size_t>(k)]]);
    try {
      score_batch(m, t.reqs, t.shared, batch, out);
    } catch (const IoError& e) {
      throw IoError(fmt::format("{} ({}): {}", task.name, task.path.string(), e.what()));
    }
    progress.advance(static_cast<int64_t>(batch.size()));
  }
  for (size_t i = 0; i < out.size(); ++i) {
    TaskPrediction& p = out[i];
    std::vector<double> norm;  // lm-eval: loglik / len(choice) in code points
    for (size_t c = 0; c < p.loglik.size(); ++c) {
      const auto n = double(task.items[i].choice_chars[c]);
      norm.push_back(n > 0 ? p.loglik[c] / n : -std::numeric_limits<double>::infinity());
    }
    p.pred = argmax(p.loglik);
    p.pred_norm = argmax(norm);
  }
  return out;
}

std::vector<TaskPrediction> score_task(const model::Decoder& m, const io::Tokenizer& tok,
                                       const Task& task, const TaskOptions& o,
                                       const std::string& label) {
  return score_task(m, task, tokenize_task(tok, task, o.max_len, m.config().vocab_size), o.batch,
                    label);
}

int headline_pred(const Task& task, const TaskPrediction& p) {
  return task.has_norm ? p.pred_norm : p.pred;
}

nlohmann::json task_summary(const Task& task, const std::vector<TaskPrediction>& preds) {
  std::vector<double> acc, norm;
  int64_t truncated = 0;
  for (const TaskPrediction& p : preds) {
    acc.push_back(p.pred == p.gold), norm.push_back(p.pred_norm == p.gold);
    truncated += p.truncated;
  }
  nlohmann::json j = {{"acc", mean(acc)},
                      {"acc_stderr", stderr_of_mean(acc)},
                      {"n", static_cast<int64_t>(preds.size())},
                      {"truncated", truncated}};
  if (task.has_norm) j["acc_norm"] = mean(norm), j["acc_norm_stderr"] = stderr_of_mean(norm);
  return j;
}

}  // namespace kldq::eval
