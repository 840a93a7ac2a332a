// Reading the data of `kldq eval` before any model loads (request_inputs.hpp).
#include "request_inputs.hpp"

#include <set>

#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/core/hash.hpp"
#include "kldq/eval/flips.hpp"
#include "kldq/io/corpus.hpp"

namespace kldq::eval {

Inputs settings_from(const EvalRequest& o, int64_t max_ctx) {
  Inputs in;
  if (!o.ppl.empty()) {
    in.ppl.protocol = o.ppl_protocol;
    const int64_t ctx = o.ctx > 0 ? o.ctx : in.ppl.protocol == PplProtocol::LLAMACPP ? 512 : 2048;
    in.ppl.ctx = std::min(ctx, max_ctx);
    if (o.stride > 0 && in.ppl.protocol != PplProtocol::SLIDING)
      throw ConfigError("--stride: only the sliding protocol has a stride");
    if (o.stride > in.ppl.ctx)
      throw ConfigError(fmt::format("--stride {} exceeds the window of {}", o.stride, in.ppl.ctx));
    in.ppl.stride = o.stride;
    in.ppl.batch = o.batch;
  }
  if (!o.mmlu.empty()) {
    in.mmlu.protocol = o.mmlu_protocol;
    const bool chat = in.mmlu.protocol == MmluProtocol::CHAT0SHOT;
    if (chat && o.shots > 0) throw ConfigError("--shots: chat0shot is a 0-shot protocol");
    in.mmlu.shots = o.shots >= 0 ? o.shots : chat ? 0 : 5;
    in.mmlu.limit = o.mmlu_limit;
    in.mmlu.batch = o.batch;
    in.mmlu.max_len = max_ctx;
    in.mmlu.shared_prefix = !o.mmlu_unshared;
    in.mmlu_tag = fmt::format("{}:{}", kMmluProtocols.name(in.mmlu.protocol), in.mmlu.shots);
  }
  return in;
}

void read_data(const EvalRequest& o, const io::Tokenizer& tok, Inputs& in) {
  if (!o.ppl.empty()) {
    // The BOS the tokenizer puts in front of a text, if any (not an appended EOS).
    const auto with = tok.encode("a", true), without = tok.encode("a", false);
    const bool adds_bos = with.size() > without.size() &&
                          std::equal(without.begin(), without.end(), with.begin() + 1);
    const std::string text = io::read_corpus(o.ppl);
    if (text.empty()) throw ConfigError(fmt::format("--ppl: {} is empty", o.ppl));
    in.tokens = tok.encode(text, false);
    if (in.ppl.protocol == PplProtocol::LLAMACPP && adds_bos) {
      // llama-perplexity tokenizes with BOS in front of the stream, then writes BOS over each
      // window's first token.
      in.ppl.bos = with.front();
      in.tokens.insert(in.tokens.begin(), in.ppl.bos);
    }
    const auto n = static_cast<int64_t>(in.tokens.size());
    if (in.ppl.protocol == PplProtocol::LLAMACPP && n < 2 * in.ppl.ctx)
      throw ConfigError(
          fmt::format("--ppl: {} has {} tokens; the llamacpp protocol needs at "
                      "least 2 x ctx = {}, as llama-perplexity does",
                      o.ppl, n, 2 * in.ppl.ctx));
    in.windows = make_windows(n, in.ppl);
    if (in.windows.empty())
      throw ConfigError(fmt::format("--ppl: {} has {} tokens, fewer than one window of {}", o.ppl,
                                    n, in.ppl.ctx));
    if (in.ppl.protocol == PplProtocol::LLAMACPP && in.ppl.ctx < 4)
      throw ConfigError(
          "--ctx: the llamacpp protocol scores the second half of each window; "
          "it needs at least 4 tokens");
    in.ppl_sha256 = sha256_path(o.ppl);
  }
  if (!o.mmlu.empty()) {
    in.mmlu_data = load_mmlu(o.mmlu);
    in.items = mmlu_items(in.mmlu_data, in.mmlu);
    in.answers = mmlu_answer_tokens(tok, in.mmlu_data, in.items.front(), in.mmlu);
    in.mmlu_sha256 = sha256_path(o.mmlu);
    if (!o.reference_predictions.empty()) {
      std::string proto;
      in.ref_predictions = read_predictions(o.reference_predictions, &proto);
      if (proto != in.mmlu_tag)
        throw ConfigError(fmt::format("--reference-predictions {}: protocol {}, this run's is {}",
                                      o.reference_predictions, proto, in.mmlu_tag));
    }
  }
}

void shard_inputs(const Shard& shard, Inputs& in) {
  in.ppl.shard = shard;
  std::set<std::string> owned;
  std::vector<MmluItem> items;
  std::string last;
  for (const MmluItem& item : in.items) {
    if (item.subject != last) {  // items come in subject order
      if (shard.owns(in.mmlu_subjects++)) owned.insert(item.subject);
      last = item.subject;
    }
    if (owned.count(item.subject)) items.push_back(item);
  }
  in.items = std::move(items);
  if (in.ref_predictions)
    std::erase_if(*in.ref_predictions,
                  [&](const MmluPrediction& p) { return !owned.count(p.subject); });
}

void check_vocabulary(const Inputs& in, int64_t vocab) {
  int64_t top = -1;
  for (int32_t t : in.tokens) top = std::max<int64_t>(top, t);
  for (const auto& a : in.answers)
    for (int32_t t : a) top = std::max<int64_t>(top, t);
  if (top >= vocab)
    throw ConfigError(
        fmt::format("the tokenizer produced token id {}, outside the model's "
                    "vocabulary of {}",
                    top, vocab));
}

}  // namespace kldq::eval
