// Tokenizer selection (tokenizer.json first, then tokenizer.model) and the sentencepiece
// tokenizer through libsentencepiece, with BOS/EOS from tokenizer_config.json.
#include "kldq/io/tokenizer/tokenizer.hpp"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/workers.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/unicode.hpp"

namespace kldq::io {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::filesystem::path& model, const std::filesystem::path& config) {
    const auto status = sp_.Load(model.string());
    if (!status.ok()) throw IoError(fmt::format("{}: {}", model.string(), status.ToString()));
    if (std::filesystem::exists(config)) {
      const auto j = read_json_file(config);
      auto flag = [&](const char* key, bool& dst) {
        if (!j.contains(key) || j[key].is_null()) return;
        if (!j[key].is_boolean())
          throw IoError(fmt::format("{}: {}: expected true or false", config.string(), key));
        dst = j[key].get<bool>();
      };
      flag("add_bos_token", add_bos_);
      flag("add_eos_token", add_eos_);
    }
    description_ = fmt::format("tokenizer.model: sentencepiece, {} pieces, add_bos {}, add_eos {}",
                               sp_.GetPieceSize(), add_bos_, add_eos_);
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    int64_t bad = -1;
    const std::string clean = unicode::sanitize_utf8(text, &bad);
    if (bad >= 0)
      log::warn(
          "input is not valid UTF-8 (first bad byte at offset {}); invalid sequences become U+FFFD",
          bad);
    std::vector<int> pieces;
    const auto status = sp_.Encode(clean, &pieces);
    if (!status.ok()) throw IoError(fmt::format("sentencepiece: {}", status.ToString()));
    std::vector<int32_t> ids;
    if (add_special_tokens && add_bos_ && sp_.bos_id() >= 0) ids.push_back(sp_.bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (add_special_tokens && add_eos_ && sp_.eos_id() >= 0) ids.push_back(sp_.eos_id());
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids, bool) const override {
    std::vector<int> in;
    for (int32_t id : ids)
      if (id >= 0 && id < sp_.GetPieceSize()) in.push_back(id);
    std::string out;
    const auto status = sp_.Decode(in, &out);
    if (!status.ok()) throw IoError(fmt::format("sentencepiece: {}", status.ToString()));
    return out;
  }

  std::string token(int32_t id) const override {
    return id >= 0 && id < sp_.GetPieceSize() ? sp_.IdToPiece(id) : std::string();
  }
  int64_t size() const override { return sp_.GetPieceSize(); }
  std::string describe() const override { return description_; }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  // Without tokenizer_config.json: sentencepiece's own default, no BOS/EOS.
  bool add_bos_ = false, add_eos_ = false;
  std::string description_;
};

}  // namespace

// Sentencepiece's Encode is const and keeps no state between calls, so its texts run in parallel.
std::vector<std::vector<int32_t>> Tokenizer::encode_all(const std::vector<std::string>& texts,
                                                        bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  for_ranges(texts.size(), size_t(cpu_workers()), [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) out[i] = encode(texts[i], add_special_tokens);
  });
  return out;
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir))
    throw ConfigError(fmt::format("{}: not a directory", dir.string()));
  if (std::filesystem::exists(dir / "tokenizer.json"))
    return from_json_file(dir / "tokenizer.json");
  if (std::filesystem::exists(dir / "tokenizer.model"))
    return std::make_unique<SentencePieceTokenizer>(dir / "tokenizer.model",
                                                    dir / "tokenizer_config.json");
  throw IoError(fmt::format("{}: no tokenizer.json or tokenizer.model", dir.string()));
}

}  // namespace kldq::io
