// Tokenizer parity with the reference libraries (the oracle tests/oracle/tok_oracle.py runs
// Hugging Face `tokenizers` and `sentencepiece` from the venv): identical ids on a generated
// corpus of 6,758 strings for the real Qwen tokenizer, Llama-3 and GPT-2 style pre-tokenizers,
// a byte-fallback BPE and sentencepiece; decode(encode(s)) equals the normalized text; the
// whole WikiText-2 test file gives the same ids. encode_all (several threads) gives them too.
#include <fstream>

#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/io/tokenizer/unicode.hpp"
#include "support/catch.hpp"

namespace {

using kldq::test::fs::path;

const path* oracle_dir() {
  static kldq::test::TempDir work("tok-oracle");
  static const bool ok = [] {
    const auto data = kldq::test::shared_data("");
    const auto py = kldq::test::python_with("tokenizers sentencepiece");
    if (!data || !py) return false;
    const auto r =
        kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/tok_oracle.py --data " +
                                data->string() + " --workdir " + work.path().string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    return true;
  }();
  return ok ? &work.path() : nullptr;
}

std::vector<nlohmann::json> read_jsonl(const path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

void check_case(const std::string& name, bool check_roundtrip) {
  const path* dir = oracle_dir();
  if (!dir) KLDQ_SKIP("needs ../shared/data and a Python with tokenizers and sentencepiece");
  const auto texts = read_jsonl(*dir / "corpus.jsonl");
  const auto ref = read_jsonl(*dir / (name + ".jsonl"));
  REQUIRE(texts.size() == ref.size());
  REQUIRE(texts.size() >= 5000);
  const auto tok = kldq::io::Tokenizer::load(*dir / name);
  size_t mismatches = 0, roundtrip_failures = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i]["text"];
    const std::vector<int32_t> ids = tok->encode(text);
    if (ids != ref[i]["ids"].get<std::vector<int32_t>>()) {
      if (mismatches++ < 3)
        UNSCOPED_INFO(name << " differs on string " << i << ": " << text.substr(0, 80));
    }
    // The decoded text is what the reference decodes (and, for byte-level BPE, the normalized
    // input: nothing is lost).
    const std::string decoded = tok->decode(ids);
    bool ok = decoded == ref[i]["decoded"].get<std::string>();
    if (check_roundtrip) ok = ok && decoded == ref[i]["normalized"].get<std::string>();
    if (!ok && roundtrip_failures++ < 3) UNSCOPED_INFO(name << " decode differs on string " << i);
  }
  CHECK(mismatches == 0);
  CHECK(roundtrip_failures == 0);
  // Encoded on several threads at once (each with its own word cache): the same ids.
  std::vector<std::string> all;
  for (const auto& t : texts) all.push_back(t["text"].get<std::string>());
  const std::vector<std::vector<int32_t>> many = tok->encode_all(all);
  REQUIRE(many.size() == ref.size());
  size_t parallel_mismatches = 0;
  for (size_t i = 0; i < many.size(); ++i)
    parallel_mismatches += many[i] != ref[i]["ids"].get<std::vector<int32_t>>();
  CHECK(parallel_mismatches == 0);
}

}  // namespace

TEST_CASE("Qwen tokenizer.json matches tokenizers", "[io][tokenizer]") {
  check_case("qwen", true);
}
TEST_CASE("Llama-3 style split regex matches tokenizers", "[io][tokenizer]") {
  check_case("llama3", false);  // its BOS template makes decode(encode(s)) start with BOS
}
TEST_CASE("GPT-2 style ByteLevel regex matches tokenizers", "[io][tokenizer]") {
  check_case("gpt2", true);
}
TEST_CASE("NFKC, regex Replace, literal Split, Digits, ByteLevel prefix space match tokenizers",
          "[io][tokenizer]") {
  check_case("misc", false);
}
TEST_CASE("Metaspace pre-tokenizer and decoder match tokenizers", "[io][tokenizer]") {
  check_case("stories-meta", false);
}
TEST_CASE("byte-fallback BPE (stories260K) matches tokenizers", "[io][tokenizer]") {
  check_case("stories-bpe", false);
}
TEST_CASE("sentencepiece tokenizer.model matches the sentencepiece package", "[io][tokenizer]") {
  check_case("stories-sp", false);
}

TEST_CASE("NFKC matches the tokenizers library's normalizer", "[io][tokenizer]") {
  const path* dir = oracle_dir();
  if (!dir) KLDQ_SKIP("needs ../shared/data and a Python with tokenizers");
  const auto texts = read_jsonl(*dir / "corpus.jsonl");
  const auto ref = read_jsonl(*dir / "qwen.jsonl");
  size_t bad = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto got = kldq::io::unicode::encode_utf8(kldq::io::unicode::nfkc(
        kldq::io::unicode::decode_utf8(texts[i]["text"].get<std::string>())));
    if (got != ref[i]["nfkc"].get<std::string>() && bad++ < 3)
      UNSCOPED_INFO("NFKC differs on string " << i);
  }
  CHECK(bad == 0);
}

TEST_CASE("WikiText-2 test tokenizes to the same ids as tokenizers", "[io][tokenizer]") {
  const path* dir = oracle_dir();
  if (!dir) KLDQ_SKIP("needs ../shared/data and a Python with tokenizers");
  const auto want = nlohmann::json::parse(kldq::test::read_text(*dir / "wikitext_qwen.json"))
                        .get<std::vector<int32_t>>();
  const auto tok = kldq::io::Tokenizer::load(*dir / "qwen");
  const auto got =
      tok->encode(kldq::test::read_text(*kldq::test::shared_data("wikitext-2/wiki.test.raw")));
  CHECK(want.size() > 290000);
  CHECK(got.size() == want.size());
  CHECK(got == want);
}
