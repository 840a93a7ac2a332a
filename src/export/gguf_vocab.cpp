// GGUF tokenizer metadata from a checkpoint's tokenizer files (llama.cpp token types: 1 normal,
// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
#include "gguf_vocab.hpp"

#include <fmt/format.h>
#include <sentencepiece_processor.h>

#include <optional>

#include "kldq/core/error.hpp"
#include "kldq/io/document.hpp"
#include "kldq/io/json_util.hpp"

namespace kldq::exporting {
namespace {

namespace fs = std::filesystem;
enum TokenType : int32_t {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6
};

// config.json's id for `key` (an integer or a list whose first entry is one), if any.
std::optional<uint32_t> config_id(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const nlohmann::json* v = &config[key];
  if (v->is_array() && !v->empty()) v = &(*v)[0];
  if (!v->is_number_unsigned()) return std::nullopt;
  return v->get<uint32_t>();
}

void pad_to(std::vector<std::string>& tokens, std::vector<int32_t>& types, int64_t n) {
  for (int64_t i = static_cast<int64_t>(tokens.size()); i < n; ++i) {
    tokens.push_back(fmt::format("[PAD{}]", i));
    types.push_back(UNUSED);
  }
}

void add_sentencepiece(io::GgufWriter& g, const fs::path& file, int64_t vocab) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(file.string());
  if (!status.ok())
    throw IoError(fmt::format("{}: sentencepiece: {}", file.string(), status.ToString()));
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  if (sp.GetPieceSize() > vocab)
    throw ConfigError(fmt::format("{}: {} pieces, more than the model's vocab_size {}",
                                  file.string(), sp.GetPieceSize(), vocab));
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    tokens.push_back(sp.IdToPiece(i));
    scores.push_back(sp.GetScore(i));
    types.push_back(sp.IsUnknown(i)   ? UNKNOWN
                    : sp.IsControl(i) ? CONTROL
                    : sp.IsUnused(i)  ? UNUSED
                    : sp.IsByte(i)    ? BYTE
                                      : NORMAL);
  }
  pad_to(tokens, types, vocab);
  scores.resize(tokens.size(), -10000.0f);
  g.add_string("tokenizer.ggml.model", "llama");
  g.add_strings("tokenizer.ggml.tokens", tokens);
  g.add_f32s("tokenizer.ggml.scores", scores);
  g.add_i32s("tokenizer.ggml.token_type", types);
  if (sp.bos_id() >= 0)
    g.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(sp.bos_id()));
  if (sp.eos_id() >= 0)
    g.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(sp.eos_id()));
  if (sp.unk_id() >= 0)
    g.add_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(sp.unk_id()));
  g.add_bool("tokenizer.ggml.add_bos_token", true);
  g.add_bool("tokenizer.ggml.add_eos_token", false);
}

void add_bpe(io::GgufWriter& g, const fs::path& file, int64_t vocab, const std::string& arch) {
  const std::string where = file.string();
  // llama.cpp picks its pre-tokenizer by name; kldq knows Qwen2's (the `qwen2` one). Another BPE
  // tokenizer written with a guessed name would tokenize differently there, silently.
  if (arch != "qwen2")
    throw ConfigError(
        fmt::format("{}: GGUF export of a BPE tokenizer.json is built for Qwen2 "
                    "only (llama.cpp's pre-tokenizer 'qwen2'); this {} model needs a "
                    "sentencepiece tokenizer.model",
                    where, arch));
  const nlohmann::json j = io::read_json_file(file);
  const io::Doc md = io::Doc(j, where, io::DocKind::CONFIG)["model"];
  const nlohmann::json& model = md.json();
  if (!model.is_object() || model.value("type", "") != "BPE")
    throw ConfigError(
        fmt::format("{}: model.type: GGUF export needs a BPE tokenizer (or a "
                    "sentencepiece tokenizer.model)",
                    where));
  std::vector<std::string> tokens(static_cast<size_t>(vocab));
  std::vector<int32_t> types(static_cast<size_t>(vocab), 0);
  auto place = [&](const std::string& text, int64_t id, int32_t type) {
    if (id < 0 || id >= vocab)
      throw ConfigError(fmt::format("{}: token '{}' has id {} beyond the model's vocab_size {}",
                                    where, text, id, vocab));
    tokens[static_cast<size_t>(id)] = text;
    types[static_cast<size_t>(id)] = type;
  };
  std::vector<std::string> merges;
  try {  // a malformed entry is the file's error, not an internal one
    for (const auto& [text, id] : md["vocab"].json().items())
      place(text, id.get<int64_t>(), NORMAL);
    if (j.contains("added_tokens"))
      for (const auto& t : j["added_tokens"])
        place(t.at("content").get<std::string>(), t.at("id").get<int64_t>(),
              t.value("special", false) ? CONTROL : USER_DEFINED);
    for (const auto& m : md["merges"].json())
      merges.push_back(m.is_array() ? m.at(0).get<std::string>() + " " + m.at(1).get<std::string>()
                                    : m.get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(
        fmt::format("{}: malformed vocab, added_tokens or merges ({})", where, e.what()));
  }
  for (size_t i = 0; i < tokens.size(); ++i)
    if (types[i] == 0) tokens[i] = fmt::format("[PAD{}]", i), types[i] = UNUSED;
  g.add_string("tokenizer.ggml.model", "gpt2");
  g.add_string("tokenizer.ggml.pre", arch == "qwen2" ? "qwen2" : "default");
  g.add_strings("tokenizer.ggml.tokens", tokens);
  g.add_i32s("tokenizer.ggml.token_type", types);
  g.add_strings("tokenizer.ggml.merges", merges);
  g.add_bool("tokenizer.ggml.add_bos_token", false);
}

}  // namespace

void add_vocab(io::GgufWriter& g, const fs::path& dir, const model::ModelConfig& c,
               const std::string& arch) {
  if (fs::exists(dir / "tokenizer.model")) {
    add_sentencepiece(g, dir / "tokenizer.model", c.vocab_size);
    return;
  }
  if (!fs::exists(dir / "tokenizer.json"))
    throw ConfigError(fmt::format("{}: no tokenizer.json or tokenizer.model to write into the GGUF",
                                  dir.string()));
  add_bpe(g, dir / "tokenizer.json", c.vocab_size, arch);
  const nlohmann::json config = io::read_json_file(dir / "config.json", true);
  if (auto id = config_id(config, "bos_token_id")) g.add_u32("tokenizer.ggml.bos_token_id", *id);
  if (auto id = config_id(config, "eos_token_id")) g.add_u32("tokenizer.ggml.eos_token_id", *id);
  if (auto id = config_id(config, "pad_token_id"))
    g.add_u32("tokenizer.ggml.padding_token_id", *id);
  // The chat template, as llama.cpp's converter copies it from tokenizer_config.json.
  if (fs::exists(dir / "tokenizer_config.json")) {
    const nlohmann::json tc = io::read_json_file(dir / "tokenizer_config.json");
    if (tc.is_object() && tc.contains("chat_template") && tc["chat_template"].is_string())
      g.add_string("tokenizer.chat_template", tc["chat_template"].get<std::string>());
  }
}

}  // namespace kldq::exporting
