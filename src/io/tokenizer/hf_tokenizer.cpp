// tokenizer.json: the Hugging Face tokenizers pipeline. Added (special) tokens are cut out of
// the raw text first (leftmost-longest, honouring lstrip/rstrip/single_word; tokens marked
// `normalized` are matched after normalization), each remaining segment is normalized,
// pre-tokenized and run through the BPE model, and the post-processor adds its special tokens.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>

#include "bpe.hpp"
#include "hf_pipeline.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/workers.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/io/tokenizer/unicode.hpp"
#include "longest_match.hpp"

namespace kldq::io {
namespace {

// Limits on hostile files (docs/ARCHITECTURE.md, "Untrusted input").
constexpr size_t kMaxAddedChars = 1'000'000;

struct AddedToken {
  std::u32string content;
  int32_t id;
  bool special, lstrip, rstrip, single_word, normalized;
};

// A piece of input: either an added token (id >= 0) or text still to be tokenized.
struct Piece {
  std::u32string text;
  int32_t id = -1;
};

class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(const nlohmann::json& doc, const std::string& file);

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::vector<std::vector<int32_t>> encode_all(const std::vector<std::string>& texts,
                                               bool add_special_tokens) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string token(int32_t id) const override;
  int64_t size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::string describe() const override { return description_; }

 private:
  // Splits text pieces around the added tokens whose `normalized` flag equals `normalized`.
  void split_added(std::vector<Piece>& pieces, bool normalized) const;
  void parse_added_tokens(const Doc& added);
  void parse_post_processor(const Doc& pp);
  std::vector<int32_t> encode_with(std::string_view text, bool add_special_tokens,
                                   WordCache& cache) const;
  void encode_text(std::u32string text, bool at_start, std::vector<int32_t>& out,
                   WordCache& cache) const;

  std::unique_ptr<Bpe> bpe_;
  std::optional<Normalizer> normalizer_;
  std::optional<PreTokenizer> pre_tokenizer_;
  std::optional<Decoder> decoder_;
  std::vector<AddedToken> added_;  // `normalized` ones hold their normalized text
  // [0]: raw, [1]: normalized tokens; a match's index picks from added_of_ of the same kind.
  LongestMatch matcher_[2];
  std::vector<size_t> added_of_[2];
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // post-processor template around the text
  std::vector<std::string> id_to_token_;
  std::vector<char> special_;  // by id
  std::string description_;
  // encode()'s word cache, one thread at a time; encode_all gives each of its threads its own.
  mutable WordCache cache_;
  mutable std::mutex cache_mutex_;
};

HfTokenizer::HfTokenizer(const nlohmann::json& doc, const std::string& file) {
  const Doc root(doc, file, DocKind::DATA);
  if (!doc.is_object()) root.fail("expected a JSON object");
  const Doc model = root["model"];
  const std::string type = model.str_or("type", "BPE");
  if (type != "BPE")
    model.has("type") ? model["type"].fail(fmt::format("unsupported model type '{}' (BPE)", type))
                      : model.fail("unsupported model");
  bpe_ = std::make_unique<Bpe>(model);
  id_to_token_ = bpe_->id_to_token();
  if (root.has("normalizer")) normalizer_ = Normalizer::parse(root["normalizer"]);
  if (root.has("pre_tokenizer")) pre_tokenizer_ = PreTokenizer::parse(root["pre_tokenizer"]);
  if (root.has("decoder")) decoder_ = Decoder::parse(root["decoder"]);
  if (root.has("added_tokens")) parse_added_tokens(root["added_tokens"]);
  special_.assign(id_to_token_.size(), 0);
  for (const auto& t : added_) special_[t.id] = t.special;
  std::vector<std::u32string> patterns[2];
  for (size_t i = 0; i < added_.size(); ++i) {
    patterns[added_[i].normalized].push_back(added_[i].content);
    added_of_[added_[i].normalized].push_back(i);
  }
  for (int k = 0; k < 2; ++k) matcher_[k] = LongestMatch(patterns[k]);
  if (root.has("post_processor")) parse_post_processor(root["post_processor"]);
  description_ = fmt::format("tokenizer.json: BPE, {} tokens, {} added", bpe_->id_to_token().size(),
                             added_.size());
}

// added_tokens: each checked (id range, content, total length) and, when `normalized`, held by its
// normalized text; id_to_token_ grows to cover the ids.
void HfTokenizer::parse_added_tokens(const Doc& added) {
  // Ids past the vocabulary leave gaps in id_to_token_: bounded so a hostile id cannot make it
  // huge. Real tokenizers number added tokens right after the vocabulary.
  const int64_t max_id = static_cast<int64_t>(id_to_token_.size() + added.size()) + kMaxIdGap;
  size_t chars = 0;
  for (size_t i = 0; i < added.size(); ++i) {
    const Doc a = added[i];
    const int64_t id = a["id"].integer();
    if (id < 0 || id > max_id)
      a["id"].fail(fmt::format("invalid id (0 to {}: the vocabulary, the added tokens and {} more)",
                               max_id, kMaxIdGap));
    AddedToken t{unicode::decode_utf8(a["content"].str()),
                 static_cast<int32_t>(id),
                 a.bool_or("special", false),
                 a.bool_or("lstrip", false),
                 a.bool_or("rstrip", false),
                 a.bool_or("single_word", false),
                 a.bool_or("normalized", false)};
    if (t.content.empty()) a["content"].fail("empty added token");
    if ((chars += t.content.size()) > kMaxAddedChars)
      a["content"].fail(
          fmt::format("added tokens longer than {} characters in all", kMaxAddedChars));
    // tokenizers matches (and decodes) a `normalized` token by its normalized text.
    if (t.normalized && normalizer_) {
      normalizer_->apply(t.content);
      // Counted again as matched: a normalizer may expand the text (raw + normalized count).
      if ((chars += t.content.size()) > kMaxAddedChars)
        a["content"].fail(fmt::format("added tokens longer than {} characters in all, normalized",
                                      kMaxAddedChars));
    }
    if (t.content.empty()) a["content"].fail("added token normalizes to nothing");
    if (id_to_token_.size() <= static_cast<size_t>(id)) id_to_token_.resize(id + 1);
    id_to_token_[id] = unicode::encode_utf8(t.content);
    added_.push_back(std::move(t));
  }
}

void HfTokenizer::parse_post_processor(const Doc& pp) {
  const std::string type = pp["type"].str();
  if (type == "Sequence") {  // Llama-3: ByteLevel then TemplateProcessing
    const Doc steps = pp["processors"];
    for (size_t i = 0; i < steps.size(); ++i) parse_post_processor(steps[i]);
    return;
  }
  if (type == "ByteLevel") return;  // only trims offsets; ids are unchanged
  if (type != "TemplateProcessing")
    pp["type"].fail(fmt::format("unsupported post_processor type '{}'", type));
  std::map<std::string, std::vector<int32_t>> specials;
  if (pp.has("special_tokens"))
    for (const auto& [name, v] : pp["special_tokens"].json().items()) {
      const Doc ids = pp["special_tokens"][name]["ids"];
      for (size_t k = 0; k < ids.size(); ++k)
        specials[name].push_back(static_cast<int32_t>(ids[k].integer()));
    }
  const Doc single = pp["single"];
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const Doc item = single[i];
    if (item.has("Sequence")) {
      if (item["Sequence"]["id"].str() != "A")
        item["Sequence"]["id"].fail("single template uses sequence A");
      seen_sequence = true;
    } else if (item.has("SpecialToken")) {
      const std::string name = item["SpecialToken"]["id"].str();
      if (!specials.count(name))
        item["SpecialToken"]["id"].fail(fmt::format("unknown special token '{}'", name));
      auto& dst = seen_sequence ? suffix_ids_ : prefix_ids_;
      dst.insert(dst.end(), specials[name].begin(), specials[name].end());
    } else {
      item.fail("expected Sequence or SpecialToken");
    }
  }
}

void HfTokenizer::split_added(std::vector<Piece>& pieces, bool normalized) const {
  std::vector<Piece> out;
  for (auto& p : pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    const std::u32string& s = p.text;
    const std::vector<int32_t> longest = matcher_[normalized].longest_at(s);  // [s.size()]
    size_t pos = 0, emitted = 0;
    while (pos < s.size()) {
      if (longest[pos] < 0) {
        ++pos;
        continue;
      }
      const AddedToken* hit = &added_[added_of_[normalized][longest[pos]]];
      if (hit->single_word) {
        // As tokenizers: a single_word match inside a word (Rust regex \w on either side) is
        // dropped, and its text stays plain (no shorter token is tried in its place).
        const size_t end = pos + hit->content.size();
        if ((pos > 0 && unicode::is_word(s[pos - 1])) ||
            (end < s.size() && unicode::is_word(s[end]))) {
          pos = end;
          continue;
        }
      }
      size_t b = pos, e = pos + hit->content.size();
      if (hit->lstrip)
        while (b > emitted && unicode::is_space(s[b - 1])) --b;
      if (hit->rstrip)
        while (e < s.size() && unicode::is_space(s[e])) ++e;
      if (b > emitted) out.push_back({s.substr(emitted, b - emitted), -1});
      out.push_back({{}, hit->id});
      emitted = pos = e;
    }
    if (emitted < s.size()) out.push_back({s.substr(emitted), -1});
  }
  pieces = std::move(out);
}

void HfTokenizer::encode_text(std::u32string text, bool at_start, std::vector<int32_t>& out,
                              WordCache& cache) const {
  std::vector<std::u32string> words{std::move(text)};
  if (pre_tokenizer_) pre_tokenizer_->apply(words, at_start);
  for (const auto& w : words) bpe_->encode_word(unicode::encode_utf8(w), out, cache);
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const std::lock_guard lock(cache_mutex_);
  return encode_with(text, add_special_tokens, cache_);
}

std::vector<std::vector<int32_t>> HfTokenizer::encode_all(const std::vector<std::string>& texts,
                                                          bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  for_ranges(texts.size(), size_t(cpu_workers()), [&](size_t begin, size_t end) {
    WordCache cache;
    for (size_t i = begin; i < end; ++i) out[i] = encode_with(texts[i], add_special_tokens, cache);
  });
  return out;
}

std::vector<int32_t> HfTokenizer::encode_with(std::string_view text, bool add_special_tokens,
                                              WordCache& cache) const {
  int64_t bad = -1;
  std::vector<Piece> pieces{{unicode::decode_utf8(text, &bad), -1}};
  if (bad >= 0)
    log::warn(
        "input is not valid UTF-8 (first bad byte at offset {}); invalid sequences become U+FFFD",
        bad);
  split_added(pieces, /*normalized=*/false);
  if (normalizer_)
    for (auto& p : pieces)
      if (p.id < 0) normalizer_->apply(p.text);
  split_added(pieces, /*normalized=*/true);
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = prefix_ids_;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].id >= 0)
      ids.push_back(pieces[i].id);
    else
      encode_text(std::move(pieces[i].text), i == 0, ids, cache);
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

std::string HfTokenizer::token(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() ? id_to_token_[id]
                                                                  : std::string();
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::u32string> tokens;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) continue;
    if (skip_special_tokens && special_[id]) continue;
    tokens.push_back(unicode::decode_utf8(id_to_token_[id]));
  }
  if (!decoder_) {  // the library joins tokens with spaces when there is no decoder
    std::u32string all;
    for (size_t i = 0; i < tokens.size(); ++i) all += (i ? U" " : U"") + tokens[i];
    return unicode::encode_utf8(all);
  }
  decoder_->apply(tokens);
  std::u32string all;
  for (const auto& t : tokens) all += t;
  return unicode::encode_utf8(all);
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_json_file(const std::filesystem::path& file) {
  return std::make_unique<HfTokenizer>(read_json_file(file), file.string());
}

}  // namespace kldq::io
