// MMLU prompts (lm-evaluation-harness k-shot, the reference project's ChatML 0-shot), the answers'
// tokens, and the accuracy summary.
#include "kldq/eval/mmlu.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "kldq/core/error.hpp"

namespace kldq::eval {
namespace {

constexpr const char* kLetters = "ABCD";

// Python's str.strip() for ASCII whitespace (lm-evaluation-harness strips the question).
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string options_text(const MmluItem& it) {
  std::string s;
  for (int c = 0; c < 4; ++c) s += fmt::format("\n{}. {}", kLetters[c], it.choices[c]);
  return s;
}

std::string subject_words(std::string s) {
  std::replace(s.begin(), s.end(), '_', ' ');
  return s;
}

}  // namespace

std::array<std::string, 4> mmlu_continuations(MmluProtocol protocol) {
  if (protocol == MmluProtocol::FEWSHOT) return {" A", " B", " C", " D"};
  return {"A", "B", "C", "D"};
}

std::string mmlu_prompt(const MmluData& data, const MmluItem& item, const MmluOptions& o) {
  if (o.protocol == MmluProtocol::CHAT0SHOT)
    return "<|im_start|>system\nOutput only the single letter (A, B, C, or D) corresponding to "
           "the correct answer.<|im_end|>\n<|im_start|>user\nQuestion: " +
           item.question + "\nOptions:" + options_text(item) +
           "\nAnswer:<|im_end|>\n<|im_start|>assistant\n";
  std::string s =
      fmt::format("The following are multiple choice questions (with answers) about {}.\n\n",
                  subject_words(item.subject));
  if (o.shots > 0) {
    const auto& dev = data.dev.at(item.subject);
    for (int k = 0; k < o.shots; ++k)
      s += strip(dev[k].question) + options_text(dev[k]) + "\nAnswer: " + kLetters[dev[k].answer] +
           "\n\n";
  }
  return s + strip(item.question) + options_text(item) + "\nAnswer:";
}

AnswerTokens mmlu_answer_tokens(const io::Tokenizer& tok, const MmluData& data,
                                const MmluItem& first, const MmluOptions& o) {
  const std::string prompt = mmlu_prompt(data, first, o);
  const std::vector<int32_t> base = tok.encode(prompt, false);
  const auto conts = mmlu_continuations(o.protocol);
  AnswerTokens out;
  for (int c = 0; c < 4; ++c) {
    const std::vector<int32_t> full = tok.encode(prompt + conts[c], false);
    if (full.size() <= base.size() || !std::equal(base.begin(), base.end(), full.begin()))
      throw ConfigError(fmt::format(
          "MMLU: the answer \"{}\" does not extend the prompt's tokens with {} (its tokens "
          "would change the prompt's last tokens)",
          conts[c], tok.describe()));
    out[c].assign(full.begin() + static_cast<int64_t>(base.size()), full.end());
  }
  return out;
}

}  // namespace kldq::eval
