// Tokenizer building blocks against hand-derived expectations: UTF-8 replacement as Python's
// errors="replace", regex semantics (leftmost-first, greedy with backtracking, lookahead,
// case-insensitive groups), NFC, and malformed tokenizer.json files naming the JSON path.
#include <nlohmann/json.hpp>

#include <random>

#include "kldq/core/error.hpp"
#include "kldq/io/tokenizer/regex.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/io/tokenizer/unicode.hpp"
#include "kldq/quant/plan.hpp"
#include "support/catch.hpp"

namespace u = kldq::io::unicode;
using kldq::io::Regex;

namespace {

// All matches of `re` in `s` as UTF-8 pieces.
std::vector<std::string> pieces(const std::string& re, const std::string& s) {
  const Regex r = Regex::compile(re);
  const std::u32string t = u::decode_utf8(s);
  std::vector<std::string> out;
  for (size_t pos = 0; auto m = r.find(t, pos);) {
    out.push_back(u::encode_utf8(t.substr(m->first, m->second - m->first)));
    pos = m->second > m->first ? m->second : m->first + 1;
  }
  return out;
}

std::string load_error(const std::string& json) {
  kldq::test::TempDir dir("tok-bad");
  kldq::test::write_text(dir / "tokenizer.json", json);
  try {
    kldq::io::Tokenizer::load(dir.path());
  } catch (const kldq::Error& e) {
    return e.what();
  }
  return "(no error)";
}

const std::string kModel =
    R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";

}  // namespace

TEST_CASE("invalid UTF-8 is replaced as Python's errors='replace' does", "[io][unicode]") {
  // Expected values from CPython 3.11: bytes.decode("utf-8", "replace").
  const std::pair<std::string, std::u32string> cases[] = {
      {"a\xff"
       "b",
       U"a\uFFFDb"},
      {"\xed\xa0\x80", U"\uFFFD\uFFFD\uFFFD"},  // an encoded surrogate: 3 maximal subparts
      {"\xe2\x82", U"\uFFFD"},                  // truncated at the end: one
      {"\xe2\x82"
       "a",
       U"\uFFFDa"},
      {"\xc0\x80", U"\uFFFD\uFFFD"},                      // overlong
      {"\xf4\x90\x80\x80", U"\uFFFD\uFFFD\uFFFD\uFFFD"},  // above U+10FFFF
      {"\xf0\x9f\x98\x80\x80", U"\U0001F600\uFFFD"},
  };
  for (const auto& [in, want] : cases) {
    int64_t bad = -2;
    CHECK(u::decode_utf8(in, &bad) == want);
    CHECK(bad >= 0);
  }
  int64_t bad = -2;
  CHECK(u::decode_utf8("ok \xc3\xa9 then \xff", &bad) == U"ok \u00e9 then \uFFFD");
  CHECK(bad == 11);  // o k _ \xc3 \xa9 _ t h e n _ \xff
}

TEST_CASE("regex semantics follow Oniguruma for the tokenizer patterns", "[io][regex]") {
  // Leftmost-first alternation: 's wins over the longer alternative that also matches.
  CHECK(pieces("'s|'\\p{L}+", "'sun") == std::vector<std::string>{"'s"});
  // \s+(?!\S) leaves the last space for the next word.
  CHECK(pieces(" ?\\p{L}+|\\s+(?!\\S)|\\s+", "a   b") == std::vector<std::string>{"a", "  ", " b"});
  // Case-insensitive group, including U+017F (long s), which case-folds to 's'.
  CHECK(pieces("(?i:'s)", "'S 's '\u017F") == std::vector<std::string>{"'S", "'s", "'\u017F"});
  // Bounded repeat: digits in groups of at most three.
  CHECK(pieces("\\p{N}{1,3}", "12345") == std::vector<std::string>{"123", "45"});
  // Negated class with properties and escapes.
  // Negated class with properties and escapes; the optional prefix gives way when the letters
  // after it fail (" " before "!ab" starts no match, "!" does).
  CHECK(pieces("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+", "\xc3\xa9t\xc3\xa9 !ab\n") ==
        std::vector<std::string>{"\xc3\xa9t\xc3\xa9", "!ab"});
  CHECK(pieces("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+", "x !ab") == std::vector<std::string>{"x", "!ab"});
  for (const char* bad : {"a(", "[abc", "\\p{Greek}", "a*?", "^a", "\\w", "a{3,1}"})
    CHECK_THROWS_AS(Regex::compile(bad), kldq::io::RegexError);
}

TEST_CASE("hostile patterns fail with a message, never a hang or a stack overflow",
          "[io][regex][errors]") {
  using kldq::io::RegexError;
  // Exponential backtracking: doubles per character without a budget.
  const std::u32string as(40, U'a');
  CHECK_THROWS_WITH(Regex::compile("(?:a+)+b").find(as, 0), HasText("catastrophic backtracking"));
  // A repeated group over a long text recurses once per iteration: bounded depth, no crash.
  const std::u32string text = u::decode_utf8(std::string(20000, 'x') + " y");
  CHECK_THROWS_WITH(Regex::compile("(?:\\S|\\s)+").find(text, 0), HasText("recursed more than"));
  // Deep nesting is refused when compiling.
  CHECK_THROWS_WITH(Regex::compile(std::string(10000, '(') + "a" + std::string(10000, ')')),
                    HasText("nested deeper than"));
  // Quadratic over a text: each search scans the run to its end; one budget for all of them.
  const std::u32string run(50000, U'a');
  Regex::Budget budget(run.size());
  const Regex ab = Regex::compile("a+b|a");
  CHECK_THROWS_WITH(
      [&] {
        for (size_t pos = 0; auto m = ab.find(run, pos, &budget);) pos = m->second;
      }(),
      HasText("catastrophic backtracking"));
  // Layer selectors use the same bounded matcher.
  CHECK_THROWS_WITH(kldq::quant::LayerSelector("re:(?:.|.)*X", "--keep")
                        .matches("model.layers.0.mlp.down_proj.model.layers.0.mlp.down_proj"),
                    HasText("catastrophic backtracking"));
  CHECK_THROWS_WITH(kldq::quant::LayerSelector(
                        "re:" + std::string(200, '(') + "a" + std::string(200, ')'), "--keep"),
                    HasText("--keep: invalid regex"));
}

TEST_CASE("the real pre-tokenizer patterns stay far below the step budget", "[io][regex]") {
  const char* patterns[] = {
      // GPT-2 (ByteLevel's built-in), Llama-3, Qwen2 (tokenizer.json of the released models).
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
  // Adversarial texts: long runs of each class the patterns treat specially, and mixtures.
  const std::string texts[] = {std::string(50000, ' '),
                               std::string(50000, ' ') + "x",
                               std::string(50000, '\n'),
                               std::string(25000, ' ') + std::string(25000, '\n') + " ",
                               std::string(50000, '!'),
                               std::string(50000, '7'),
                               std::string(50000, 'a'),
                               std::string(50000, '\''),
                               [] {
                                 std::string t;
                                 for (int i = 0; i < 10000; ++i) t += " !\n\r'";
                                 return t;
                               }()};
  uint64_t worst = 0;
  for (const char* p : patterns) {
    const Regex r = Regex::compile(p);
    for (const std::string& t : texts) {
      const std::u32string s = u::decode_utf8(t);
      Regex::Budget budget(s.size());
      const uint64_t start = budget.left;
      for (size_t pos = 0; pos <= s.size();) {
        const auto m = r.find(s, pos, &budget);
        if (!m) break;
        pos = m->second > m->first ? m->second : m->first + 1;
      }
      worst = std::max(worst, (start - budget.left) / s.size());
    }
  }
  // Steps per character of the costliest pair, against the budget's kStepsPerChar.
  INFO("worst steps per character: " << worst);
  CHECK(worst * 50 < Regex::kStepsPerChar);
}

TEST_CASE("NFC composes, reorders and handles Hangul", "[io][unicode]") {
  CHECK(u::nfc(U"e\u0301") == U"\u00e9");
  CHECK(u::nfc(U"a\u0323\u0302") == U"\u1EAD");       // reordering: dot below first
  CHECK(u::nfc(U"\u1100\u1161\u11A8") == U"\uAC01");  // L V T -> syllable
  CHECK(u::nfc(U"\u212B") == U"\u00C5");              // singleton decomposition
  CHECK(u::nfkc(U"\uFB01") == U"fi");                 // compatibility ligature
  CHECK(u::nfc(U"\uFB01") == U"\uFB01");
}

TEST_CASE("malformed tokenizer.json names the JSON path", "[io][tokenizer][errors]") {
  CHECK_THAT(load_error("{}"), HasText("model: missing"));
  CHECK_THAT(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz"]}})"),
             HasText("model.merges[0]") && HasText("zz"));
  CHECK_THAT(load_error(R"({"model": {"type": "BPE", "vocab": [], "merges": []}})"),
             HasText("model.vocab"));
  CHECK_THAT(
      load_error("{" + kModel + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a"},
             "behavior": "Isolated", "invert": false}})"),
      HasText("pre_tokenizer.pattern.Regex"));
  CHECK_THAT(load_error("{" + kModel + R"(, "normalizer": {"type": "Lowercase"}})"),
             HasText("normalizer.type") && HasText("Lowercase"));
  CHECK_THAT(
      load_error("{" + kModel +
                 R"(, "decoder": {"type": "Strip", "content": " ", "start": "one", "stop": 0}})"),
      HasText("decoder.start"));
  CHECK_THAT(load_error(R"({"model": {"type": "Unigram", "vocab": []}})"),
             HasText("model.type") && HasText("Unigram"));
  CHECK_THAT(load_error("{" + kModel + R"(, "added_tokens": [{"id": 5}]})"),
             HasText("added_tokens[0].content"));
  CHECK_THAT(load_error("{\"model\": "), HasText("invalid JSON"));
  CHECK_THAT(load_error(R"({"model": {"type": "BPE", "dropout": "x", "vocab": {}, "merges": []}})"),
             HasText("model.dropout"));
  CHECK_THAT(load_error(R"({"model": {"type": "BPE", "dropout": 0.1, "vocab": {}, "merges": []}})"),
             HasText("model.dropout") && HasText("not supported"));
}

TEST_CASE("a minimal tokenizer.json encodes with merges and decodes", "[io][tokenizer]") {
  kldq::test::TempDir dir("tok-min");
  kldq::test::write_text(dir / "tokenizer.json", "{" + kModel + "}");
  const auto tok = kldq::io::Tokenizer::load(dir.path());
  CHECK(tok->encode("abab") == std::vector<int32_t>{2, 2});
  CHECK(tok->encode("aba") == std::vector<int32_t>{2, 0});
  CHECK(tok->decode({2, 0}) == "ab a");  // no decoder: tokens joined with spaces
}

namespace {

// A tokenizer over kModel's vocabulary with the added tokens `added` (ids 3, 4, ...).
std::unique_ptr<kldq::io::Tokenizer> with_added(const kldq::test::TempDir& dir,
                                                const std::vector<std::string>& added) {
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < added.size(); ++i)
    list.push_back({{"id", 3 + i}, {"content", added[i]}, {"special", true}});
  kldq::test::write_text(dir / "tokenizer.json",
                         "{" + kModel + R"(, "added_tokens": )" + list.dump() + "}");
  return kldq::io::Tokenizer::load(dir.path());
}

}  // namespace

TEST_CASE("added tokens match leftmost-longest, in linear time", "[io][tokenizer]") {
  kldq::test::TempDir dir("tok-added");
  const auto plain = with_added(dir, {});
  // Oracle: at each position the longest added token starting there (the first listed of equal
  // ones), else one character of plain text; text runs encoded by the vocabulary alone.
  auto expected = [&](const std::vector<std::string>& added, const std::string& s) {
    std::vector<int32_t> ids;
    std::string run;
    auto flush = [&] {
      for (int32_t id : plain->encode(run, false)) ids.push_back(id);
      run.clear();
    };
    for (size_t pos = 0; pos < s.size();) {
      int best = -1;
      for (size_t i = 0; i < added.size(); ++i)
        if (s.compare(pos, added[i].size(), added[i]) == 0 &&
            (best < 0 || added[i].size() > added[best].size()))
          best = static_cast<int>(i);
      if (best < 0) {
        run += s[pos++];
        continue;
      }
      flush();
      ids.push_back(3 + best);
      pos += added[best].size();
    }
    flush();
    return ids;
  };
  std::mt19937 rng(7);
  auto random_string = [&](size_t max_len) {
    std::string s(1 + rng() % max_len, 'a');
    for (char& c : s) c = "ab"[rng() % 2];
    return s;
  };
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<std::string> added;
    for (int i = 0, n = 1 + static_cast<int>(rng() % 8); i < n; ++i)
      added.push_back(random_string(6));
    const std::string text = random_string(60);
    INFO("trial " << trial << ": " << text);
    CHECK(with_added(dir, added)->encode(text, false) == expected(added, text));
  }
  // 1,000 tokens a^k b sharing every prefix, over 200,000 a's that none of them matches: a scan
  // trying each token at each position takes ~10^11 steps, the automaton one per character.
  std::vector<std::string> hostile;
  for (int k = 1; k <= 1000; ++k) hostile.push_back(std::string(k, 'a') + "b");
  const auto tok = with_added(dir, hostile);
  CHECK(tok->encode(std::string(200000, 'a'), false) ==
        plain->encode(std::string(200000, 'a'), false));
  CHECK(tok->encode(std::string(300, 'a') + "b", false) == std::vector<int32_t>{3 + 299});
}

TEST_CASE("vocabulary and added-token ids and lengths are bounded", "[io][tokenizer][errors]") {
  // A vocabulary id of 2*10^8 (a fuzz finding) sized the id table to 200M strings: 8 s of page
  // faults and 6 GB. Ids are bounded by the vocabulary size + 2^20; the bound itself is accepted.
  CHECK_THAT(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 200000059},
                           "merges": []}})"),
             HasText("model.vocab") && HasText("'b' has an invalid id (0 to 1048578"));
  CHECK(load_error(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1048578},
                     "merges": []}})") == "(no error)");
  CHECK_THAT(
      load_error("{" + kModel + R"(, "added_tokens": [{"id": 1073741824, "content": "x"}]})"),
      HasText("added_tokens[0].id") && HasText("invalid id"));
  const std::string long_token(1'000'001, 'x');
  CHECK_THAT(load_error("{" + kModel + R"(, "added_tokens": [{"id": 3, "content": ")" + long_token +
                        R"("}]})"),
             HasText("added_tokens[0].content") && HasText("longer than 1000000 characters"));
}
