// Tokenizers with no Python at run time: Hugging Face tokenizer.json (BPE models with their
// normalizers, pre-tokenizers, added tokens, post-processor and decoders) and sentencepiece
// tokenizer.model, giving the ids the reference libraries give (docs/PROTOCOLS.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kldq::io {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`. Invalid UTF-8 is replaced by U+FFFD (one warning naming the byte
  // offset of the first bad sequence). `add_special_tokens`: apply the post-processor / BOS-EOS
  // rules (as `encode(text)` of the reference libraries does by default).
  virtual std::vector<int32_t> encode(std::string_view text,
                                      bool add_special_tokens = true) const = 0;
  // encode() of each text, on up to cpu_workers() threads (the same ids as one at a time).
  // encode() itself may be called from several threads.
  virtual std::vector<std::vector<int32_t>> encode_all(const std::vector<std::string>& texts,
                                                       bool add_special_tokens = true) const;
  // Text of `ids` (special tokens kept unless `skip_special_tokens`).
  virtual std::string decode(const std::vector<int32_t>& ids,
                             bool skip_special_tokens = false) const = 0;
  // The vocabulary entry of one id ("Ġthe", "<|im_start|>"); empty when out of range.
  virtual std::string token(int32_t id) const = 0;
  // Number of ids (vocabulary and added tokens).
  virtual int64_t size() const = 0;
  // "tokenizer.json" or "tokenizer.model" and what was read.
  virtual std::string describe() const = 0;

  // Loads the tokenizer of a checkpoint directory: tokenizer.json if present, else
  // tokenizer.model (with tokenizer_config.json's add_bos_token/add_eos_token). Only the
  // tokenizer files are needed.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& dir);
  // Loads a tokenizer.json file.
  static std::unique_ptr<Tokenizer> from_json_file(const std::filesystem::path& file);
};

}  // namespace kldq::io
