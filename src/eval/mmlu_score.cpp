// Batched MMLU scoring: answer log-likelihoods from the final hidden states of right-padded
// prompt batches (docs/PROTOCOLS.md, "MMLU").
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "kldq/core/error.hpp"
#include "kldq/core/progress.hpp"
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

}  // namespace

std::vector<MmluPrediction> score_mmlu(const model::Decoder& model, const io::Tokenizer& tok,
                                       const MmluData& data, const std::vector<MmluItem>& items,
                                       const AnswerTokens& answers, const MmluOptions& o,
                                       const std::string& label) {
  check(o.max_len >= 1 && o.batch >= 1, "score_mmlu: bad options");
  const bool single =
      std::all_of(answers.begin(), answers.end(), [](const auto& a) { return a.size() == 1; });
  std::vector<MmluPrediction> out(items.size());
  std::vector<Request> reqs;
  for (size_t i = 0; i < items.size(); ++i) {
    out[i].subject = items[i].subject;
    out[i].index = items[i].index;
    out[i].answer = items[i].answer;
    const std::vector<int32_t> prompt = tok.encode(mmlu_prompt(data, items[i], o), false);
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
  // Longest first, so a batch's padding is small and memory peaks at the start.
  std::vector<size_t> order(reqs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return reqs[a].ids.size() > reqs[b].ids.size(); });
  std::vector<int64_t> first_tokens;
  for (const auto& a : answers) first_tokens.push_back(a.front());
  const at::Tensor letters = at::tensor(first_tokens).to(model.device());  // [4] int64

  at::InferenceMode guard;
  Progress progress(label, static_cast<int64_t>(reqs.size()), "sequences");
  for (size_t b = 0; b < order.size(); b += static_cast<size_t>(o.batch)) {
    const size_t n = std::min(order.size() - b, static_cast<size_t>(o.batch));
    const int64_t T = static_cast<int64_t>(reqs[order[b]].ids.size());
    // Right padding with token 0: causal attention keeps it out of every real position.
    std::vector<int64_t> flat(n * static_cast<size_t>(T), 0), row_b, row_t, targets;
    for (size_t r = 0; r < n; ++r) {
      const Request& q = reqs[order[b + r]];
      const int64_t len = static_cast<int64_t>(q.ids.size());
      std::copy(q.ids.begin(), q.ids.end(), flat.begin() + static_cast<int64_t>(r) * T);
      const int64_t scored = single ? 1 : static_cast<int64_t>(q.targets.size());
      for (int64_t k = 0; k < scored; ++k) {
        row_b.push_back(static_cast<int64_t>(r));
        row_t.push_back(len - scored + k);
        if (!single) targets.push_back(q.targets[static_cast<size_t>(k)]);
      }
    }
    const at::Tensor ids = at::tensor(flat).view({static_cast<int64_t>(n), T});      // [n, T]
    const at::Tensor h = model.run_blocks(0, model.num_blocks(), model.embed(ids));  // [n, T, H]
    const at::Tensor rows =
        h.index({at::tensor(row_b).to(h.device()), at::tensor(row_t).to(h.device())});  // [R, H]
    const at::Tensor lp =
        at::log_softmax(model.head(rows.unsqueeze(0)).squeeze(0), -1, at::kFloat);  // [R, V]
    const at::Tensor picked =
        (single ? lp.index_select(1, letters)                                       // [R, 4]
                : lp.gather(1, at::tensor(targets).to(lp.device()).view({-1, 1})))  // [R, 1]
            .to(at::kCPU, at::kDouble)
            .contiguous();
    const double* v = picked.data_ptr<double>();
    for (size_t r = 0, row = 0; r < n; ++r) {
      const Request& q = reqs[order[b + r]];
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
    progress.advance(static_cast<int64_t>(n));
  }
  for (auto& p : out)
    p.pred = static_cast<int>(std::max_element(p.logprobs.begin(), p.logprobs.end()) -
                              p.logprobs.begin());
  return out;
}

}  // namespace kldq::eval
