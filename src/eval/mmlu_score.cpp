// Batched MMLU scoring: answer log-likelihoods from the final hidden states of right-padded
// prompt batches (docs/PROTOCOLS.md, "MMLU"). A subject's prompts share their few-shot prefix:
// its tokens (the longest common token prefix of the subject's sequences) run once into a KV
// cache, and every sequence's remaining tokens run as continuations of it, at the same positions
// as in the full prompt (the same computation, by causality; the attention over the prefix and
// over a row's own tokens joined by their log-sum-exps).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <optional>

#include "kldq/core/batches.hpp"
#include "kldq/core/clock.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/progress.hpp"
#include "kldq/eval/loglik.hpp"
#include "kldq/eval/mmlu.hpp"

namespace kldq::eval {
namespace {

// One sequence to run. choice -1: the four one-token answers are read at the last position;
// otherwise the last `targets.size()` positions predict that answer's tokens.
struct Request {
  size_t item = 0;
  int choice = -1;
  std::vector<int32_t> ids;      // input tokens, truncated from the left to max_len
  std::vector<int64_t> targets;  // choice >= 0: the answer's tokens
};

struct Scorer {
  const model::Decoder& model;
  const std::vector<Request>& reqs;
  bool single;
  at::Tensor letters;  // [4] int64 on the device: the answers' first tokens
  std::vector<MmluPrediction>& out;

  // Requests `idx` in one forward (eval/loglik.hpp). With `prefix` (a one-row cache of the first
  // P tokens every one of them shares), only each request's tokens after the first P run, as
  // continuations of that one row (Decoder::run_continuations: the prefix is not copied per row).
  void batch(const std::vector<size_t>& idx, const model::Decoder::KvCache* prefix) const {
    const int64_t P = prefix ? prefix->len : 0;
    std::vector<ScoredSequence> seqs;
    std::vector<int64_t> targets;
    for (size_t i : idx) {
      const Request& q = reqs[i];
      seqs.push_back({&q.ids, P, single ? 1 : static_cast<int64_t>(q.targets.size())});
      if (!single) targets.insert(targets.end(), q.targets.begin(), q.targets.end());
    }
    // The columns read at each scored row: the four letters, or the answer's next token.
    const at::Tensor columns =
        single ? letters.view({1, 4}).expand({int64_t(idx.size()), 4}).contiguous()  // [R, 4]
               : at::tensor(targets).view({-1, 1});                                  // [R, 1]
    const at::Tensor picked = scored_logprobs(model, seqs, {nullptr, prefix}, columns);
    const double* v = picked.data_ptr<double>();
    for (size_t r = 0, row = 0; r < idx.size(); ++r) {
      const Request& q = reqs[idx[r]];
      MmluPrediction& p = out[q.item];
      if (single) {
        for (int c = 0; c < 4; ++c) p.logprobs[c] = v[row * 4 + c];
        ++row;
      } else {
        double sum = 0;  // log-likelihood of the whole answer: sum over its tokens
        for (size_t k = 0; k < q.targets.size(); ++k) sum += v[row++];
        p.logprobs[q.choice] = sum;
      }
    }
  }
};

// The tokens every request of `group` starts with, leaving each the positions it scores.
int64_t group_prefix(const std::vector<Request>& reqs, const std::vector<size_t>& group) {
  std::vector<ScoredSequence> seqs;
  for (size_t i : group)
    seqs.push_back({&reqs[i].ids, 0, std::max<int64_t>(1, int64_t(reqs[i].targets.size()))});
  return common_prefix(seqs);
}

// One request per question (`single`: the answers are one token each, scored from the prompt's
// next-token distribution) or per question and choice, truncated to o.max_len from the left;
// `out` gets each question's identity and truncation.
std::vector<Request> make_requests(const io::Tokenizer& tok, const MmluData& data,
                                   const std::vector<MmluItem>& items, const AnswerTokens& answers,
                                   const MmluOptions& o, bool single,
                                   std::vector<MmluPrediction>& out) {
  std::vector<std::string> prompts;
  for (const MmluItem& it : items) prompts.push_back(mmlu_prompt(data, it, o));
  const std::vector<std::vector<int32_t>> encoded = tok.encode_all(prompts, false);
  std::vector<Request> reqs;
  for (size_t i = 0; i < items.size(); ++i) {
    out[i].subject = items[i].subject;
    out[i].index = items[i].index;
    out[i].answer = items[i].answer;
    const std::vector<int32_t>& prompt = encoded[i];
    for (int c = single ? -1 : 0; c < (single ? 0 : 4); ++c) {
      Request r{i, c, prompt, {}};
      if (c >= 0) {  // input: prompt + answer without its last token
        r.ids.insert(r.ids.end(), answers[c].begin(), answers[c].end() - 1);
        r.targets.assign(answers[c].begin(), answers[c].end());
      }
      const int64_t keep = o.max_len;
      if (static_cast<int64_t>(r.ids.size()) > keep) {  // keep the question's end
        r.ids.erase(r.ids.begin(), r.ids.end() - keep);
        out[i].truncated = true;
      }
      if (r.ids.empty() || r.targets.size() > r.ids.size())
        throw ConfigError(fmt::format("MMLU {} #{}: prompt of {} tokens cannot be scored within {}",
                                      items[i].subject, items[i].index, prompt.size(), keep));
      reqs.push_back(std::move(r));
    }
  }
  return reqs;
}

// Where score_mmlu's time goes (logged with -v): seconds and tokens of each phase.
struct Phases {
  double tokenize = 0, prefix = 0, batch = 0;
  int64_t prefixes = 0, prefix_tokens = 0, tokens = 0, batches = 0;
};

// The first P tokens of `ids` run into a one-row cache (a subject's shared prefix).
model::Decoder::KvCache run_prefix(const model::Decoder& model, const std::vector<int32_t>& ids,
                                   int64_t P, Phases& phases) {
  const auto t = Clock::now();
  model::Decoder::KvCache prefix = model.new_cache({0}, P);
  model.run_cached(at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + P)).view({1, P}),
                   prefix);
  if (log::enabled(log::Level::VERBOSE)) device_synchronize(model.device());  // timing only
  phases.prefix += seconds_since(t);
  ++phases.prefixes, phases.prefix_tokens += P;
  return prefix;
}

}  // namespace

std::vector<MmluPrediction> score_mmlu(const model::Decoder& model, const io::Tokenizer& tok,
                                       const MmluData& data, const std::vector<MmluItem>& items,
                                       const AnswerTokens& answers, const MmluOptions& o,
                                       const std::string& label) {
  check(o.max_len >= 1 && o.batch >= 1, "score_mmlu: bad options");
  const bool single =
      std::all_of(answers.begin(), answers.end(), [](const auto& a) { return a.size() == 1; });
  std::vector<MmluPrediction> out(items.size());
  Phases phases;
  auto t = Clock::now();
  const std::vector<Request> reqs = make_requests(tok, data, items, answers, o, single, out);
  phases.tokenize = seconds_since(t);
  // One group per subject when prefixes are shared (requests come in item order, items in
  // subject order), else one group of everything.
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (groups.empty() ||
        (o.shared_prefix && items[reqs[i].item].subject != items[reqs[i - 1].item].subject))
      groups.emplace_back();
    groups.back().push_back(i);
  }
  std::vector<int64_t> first_tokens;
  for (const auto& a : answers) first_tokens.push_back(a.front());
  const Scorer scorer{model, reqs, single, at::tensor(first_tokens).to(model.device()), out};

  at::InferenceMode guard;
  Progress progress(label, static_cast<int64_t>(reqs.size()), "sequences");
  for (std::vector<size_t>& g : groups) {
    std::optional<model::Decoder::KvCache> prefix;
    const int64_t P = o.shared_prefix ? group_prefix(reqs, g) : 0;
    if (P > 0) prefix = run_prefix(model, reqs[g.front()].ids, P, phases);
    // Longest first, so a batch's padding is small and memory peaks at the start.
    std::stable_sort(g.begin(), g.end(),
                     [&](size_t a, size_t b) { return reqs[a].ids.size() > reqs[b].ids.size(); });
    t = Clock::now();
    for (const auto [b, n] : batches(static_cast<int64_t>(g.size()), o.batch)) {
      scorer.batch({g.begin() + b, g.begin() + b + n}, prefix ? &*prefix : nullptr);
      progress.advance(n);
      ++phases.batches;
    }
    phases.batch += seconds_since(t);  // each batch ends with its results on the host
    for (size_t i : g) phases.tokens += int64_t(reqs[i].ids.size()) - P;
  }
  log::debug(
      "{}: tokenized {} sequences in {:.2f} s; {} shared prefixes ({} tokens) in {:.2f} s; {} "
      "batches ({} tokens) in {:.2f} s",
      label, reqs.size(), phases.tokenize, phases.prefixes, phases.prefix_tokens, phases.prefix,
      phases.batches, phases.tokens, phases.batch);
  for (auto& p : out)
    p.pred = static_cast<int>(std::max_element(p.logprobs.begin(), p.logprobs.end()) -
                              p.logprobs.begin());
  return out;
}

}  // namespace kldq::eval
