// Generation: prefill of the left-padded prompts through the KV cache, then one cached step per
// new token. Greedy decoding takes the argmax of the fp32 logits (first index on ties, as
// torch.argmax), so it matches transformers' generate token for token where the logits agree.
#include "kldq/eval/generate.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "kldq/core/error.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/model/decode_graph.hpp"

namespace kldq::eval {

namespace {

// The longest prompt's length, after checking that there are prompts, none empty, and that the
// longest with `max_new` new tokens fits the model's context.
int64_t checked_longest(const model::Decoder& m, const std::vector<std::vector<int64_t>>& prompts,
                        int64_t max_new) {
  check(!prompts.empty(), "generate: no prompts");
  int64_t longest = 0;
  for (const auto& p : prompts) {
    check(!p.empty(), "generate: an empty prompt");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
  }
  if (longest + max_new > m.config().max_position_embeddings)
    throw ConfigError(fmt::format(
        "the longest prompt ({} tokens) and {} new tokens exceed the model's context of {} "
        "(max_position_embeddings)",
        longest, max_new, m.config().max_position_embeddings));
  return longest;
}

// The prompts as [B, longest] int64, left-padded; pad columns hold id 0 (never attended). Each
// row's pad length is appended to `pad`.
at::Tensor left_padded(const std::vector<std::vector<int64_t>>& prompts, int64_t longest,
                       std::vector<int64_t>& pad) {
  const int64_t B = static_cast<int64_t>(prompts.size());
  at::Tensor ids = at::zeros({B, longest}, at::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[size_t(b)];
    pad.push_back(longest - static_cast<int64_t>(p.size()));
    ids[b].narrow(0, pad.back(), static_cast<int64_t>(p.size())).copy_(at::tensor(p, at::kLong));
  }
  return ids;
}

// One call's times and counts added to s (replays: steps timed in `replay`, 0 for none).
void add_stats(GenerateStats& s, const std::vector<std::vector<int64_t>>& prompts,
               const std::vector<std::vector<int64_t>>& out, double prefill, double decode,
               double replay, int64_t replays) {
  s.prefill_s += prefill;
  s.decode_s += decode;
  if (replays > 0) s.replay_s += replay, s.replay_steps += replays;
  for (size_t b = 0; b < out.size(); ++b)
    s.prompt_tokens += static_cast<int64_t>(prompts[b].size()),
        s.new_tokens += static_cast<int64_t>(out[b].size());
}

}  // namespace

at::Tensor choose_tokens(const at::Tensor& logits, const Sampling& s, at::Generator& gen) {
  // Greedy: the argmax on the logits' device (widening to fp32 is exact and keeps the order;
  // ties take the first index there as on the CPU), so only [B] ids cross to the host.
  if (s.temperature <= 0) return logits.argmax(-1).to(at::kCPU);
  at::Tensor x = logits.to(at::kCPU, at::kFloat);  // [B, V]
  // transformers' order: temperature, then top-k, then top-p, on the scaled logits.
  x = x / s.temperature;
  const double ninf = -std::numeric_limits<double>::infinity();
  if (s.top_k > 0 && s.top_k < x.size(-1)) {
    const at::Tensor kth = std::get<0>(x.topk(s.top_k, -1)).narrow(-1, s.top_k - 1, 1);
    x = x.masked_fill(x < kth, ninf);
  }
  if (s.top_p < 1) {
    // Ascending sort: drop the tokens whose cumulative probability stays within 1 - p (the
    // least likely), always keeping the most likely one.
    auto [sorted, order] = x.sort(-1, /*descending=*/false);
    const at::Tensor cum = sorted.softmax(-1).cumsum(-1);  // [B, V]
    at::Tensor drop = cum <= 1 - s.top_p;
    drop.narrow(-1, x.size(-1) - 1, 1).fill_(false);
    x = x.masked_fill(drop.scatter(-1, order, drop), ninf);
  }
  const at::Tensor p = x.softmax(-1);  // [B, V] fp32
  if (!at::isfinite(p).all().item<bool>())
    throw IoError("sampling: the model's logits are not finite (inf or NaN) for this prompt");
  return at::multinomial(p, 1, /*replacement=*/false, gen).squeeze(-1);
}

std::vector<std::vector<int64_t>> generate(const model::Decoder& m,
                                           const std::vector<std::vector<int64_t>>& prompts,
                                           const GenerateOptions& o,
                                           const std::function<void(size_t, int64_t)>& on_token,
                                           GenerateStats* stats, at::Generator* gen) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const int64_t longest = checked_longest(m, prompts, o.max_new_tokens);
  std::vector<int64_t> pad;
  const at::Tensor ids = left_padded(prompts, longest, pad);  // [B, longest]
  std::vector<std::vector<int64_t>> out(prompts.size());
  if (o.max_new_tokens <= 0) return out;
  // The last new token is never fed back: the cache needs longest + max_new - 1 columns.
  model::Decoder::KvCache cache = m.new_cache(pad, longest + o.max_new_tokens - 1);
  at::Generator own = at::detail::createCPUGenerator(o.sampling.seed);
  std::vector<bool> done(prompts.size(), false);
  // [B, V] logits of each row's last prompt token
  at::Tensor logits = m.head(m.run_cached(ids, cache).narrow(1, longest - 1, 1)).select(1, 0);
  model::DecodeGraph steps(m, cache, o.cuda_graph);
  auto t1 = t0, t_replays = t0;
  // Greedy on CUDA after the prompt's token: each step's tokens go to the host while the next step
  // already runs (DecodeGraph::greedy; a step past the last row's stop runs on, unread). The first
  // step (eager, then captured), sampled ones and CPU ones start once the host has the tokens.
  const bool greedy = o.sampling.temperature <= 0;
  int64_t replays = 0;  // steps after the first replayed one (step 2), for the steady-state rate
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const bool more = step + 1 < o.max_new_tokens,
               pipelined = greedy && step > 0 && m.device().is_cuda();
    at::Tensor started;  // pipelined: the logits of the step already running
    const at::Tensor next = pipelined ? steps.greedy(logits, more, started)
                                      : choose_tokens(logits, o.sampling, gen ? *gen : own);  // [B]
    if (step == 0) t1 = Clock::now();
    if (step == 2 && steps.captured()) t_replays = Clock::now();
    if (step > 2 && steps.captured()) ++replays;
    const int64_t* n = next.data_ptr<int64_t>();
    bool all_done = true;
    for (size_t b = 0; b < out.size(); ++b) {
      if (done[b]) continue;
      out[b].push_back(n[b]);
      if (on_token) on_token(b, n[b]);
      done[b] = std::find(o.stop.begin(), o.stop.end(), n[b]) != o.stop.end();
      all_done = all_done && done[b];
    }
    if (all_done || !more) break;
    logits = pipelined ? started : steps.step(next);  // finished rows run on, unread
  }
  steps.finish();  // a step started before the last row stopped: its time is decode time
  if (stats) {
    const auto t2 = Clock::now();
    auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    add_stats(*stats, prompts, out, secs(t0, t1), secs(t1, t2), secs(t_replays, t2), replays);
  }
  return out;
}

std::vector<int64_t> stop_tokens(const std::filesystem::path& dir) {
  for (const char* name : {"generation_config.json", "config.json"}) {
    const auto file = dir / name;
    if (!std::filesystem::is_regular_file(file)) continue;
    const nlohmann::json j = io::read_json_file(file, /*config=*/true);
    if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null()) continue;
    const nlohmann::json& e = j["eos_token_id"];
    std::vector<int64_t> ids;
    for (const auto& v : e.is_array() ? e : nlohmann::json::array({e})) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0)
        throw ConfigError(
            fmt::format("{}: eos_token_id: expected a token id or a list of them, "
                        "got {}",
                        file.string(), e.dump()));
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  return {};
}

}  // namespace kldq::eval
