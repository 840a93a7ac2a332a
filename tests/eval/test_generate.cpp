// The KV cache and generation. Oracles: the uncached forward (cached logits equal full recompute
// in fp32, for dense, packed, fitted-zero and input-scaled layers, for left-padded rows, and for
// right-padded rows continuing one shared prefix);
// transformers' greedy generate on the real stories260K checkpoints (token for token, batches
// of different lengths); invariants of sampling (top-k 1 is greedy, a seed reproduces); eval
// --speed: rates that account for every prompt and new token.
#include <ATen/ATen.h>

#include <sstream>

#include "kldq/eval/generate.hpp"
#include "kldq/experiment/results.hpp"
#include "kldq/formats/format.hpp"
#include "kldq/quant/quantizer.hpp"
#include "support/catch.hpp"

namespace {

using kldq::model::Decoder;
namespace fs = kldq::test::fs;

const fs::path kStories = KLDQ_SOURCE_DIR "/models/stories260k-qwen2";
const fs::path kWiki = KLDQ_SOURCE_DIR "/models/wikitext-qwen2-4m";

// Logits [B, T, V] of ids [B, T] through the cache: a prefill of `first` columns, then steps of
// `step` columns.
at::Tensor cached_logits(const Decoder& m, const at::Tensor& ids, std::vector<int64_t> pad,
                         int64_t first, int64_t step) {
  Decoder::KvCache c = m.new_cache(std::move(pad), ids.size(1));
  std::vector<at::Tensor> parts;
  for (int64_t t = 0; t < ids.size(1);) {
    const int64_t n = std::min<int64_t>(t == 0 ? first : step, ids.size(1) - t);
    parts.push_back(m.head(m.run_cached(ids.narrow(1, t, n), c)));
    t += n;
  }
  return at::cat(parts, 1);
}

// Rows of different lengths (right-padded) continuing one shared prefix (MMLU's few-shot prompt)
// give the full forward's logits of prefix + row at each of the row's real positions.
void check_continuations_equal_forward(const Decoder& m, double bound) {
  const int64_t V = m.config().vocab_size, P = 11;
  const at::Tensor prefix = at::randint(0, V, {1, P}, at::kLong);
  Decoder::KvCache c = m.new_cache({0}, P);
  m.run_cached(prefix, c);
  const std::vector<int64_t> lengths = {9, 4, 1};
  const at::Tensor rows = at::randint(0, V, {3, 9}, at::kLong);  // right-padded [3, 9]
  const at::Tensor got = m.head(m.run_continuations(rows, c));   // [3, 9, V]
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t n = lengths[size_t(b)];
    const at::Tensor want = m.forward(at::cat({prefix, rows.narrow(0, b, 1).narrow(1, 0, n)}, 1));
    const double diff =
        (got.narrow(0, b, 1).narrow(1, 0, n) - want.narrow(1, P, n)).abs().max().item<double>();
    INFO("continuation row " << b << " of " << n << " tokens: max |diff| " << diff << ", bound "
                             << bound);
    CHECK(diff <= bound);
  }
  CHECK(at::isfinite(got).all().item<bool>());
  // The same rows packed one after another (no padding): [14] tokens -> [14, V].
  std::vector<at::Tensor> parts;
  for (int64_t b = 0; b < 3; ++b) parts.push_back(rows[b].narrow(0, 0, lengths[size_t(b)]));
  const at::Tensor packed =
      m.head(m.run_continuations(at::cat(parts), lengths, c).unsqueeze(0)).squeeze(0);
  for (int64_t b = 0, first = 0; b < 3; first += lengths[size_t(b)], ++b) {
    const int64_t n = lengths[size_t(b)];
    const at::Tensor want = m.forward(at::cat({prefix, rows.narrow(0, b, 1).narrow(1, 0, n)}, 1));
    const double diff =
        (packed.narrow(0, first, n) - want[0].narrow(0, P, n)).abs().max().item<double>();
    INFO("packed continuation row " << b << ": max |diff| " << diff << ", bound " << bound);
    CHECK(diff <= bound);
  }
  CHECK(c.len == P);  // the prefix is not extended
}

void check_cache_equals_forward(const Decoder& m) {
  const at::Tensor ids = at::randint(0, m.config().vocab_size, {3, 23}, at::kLong);
  const at::Tensor want = m.forward(ids);  // [3, 23, V]
  // fp32 rounding of GEMMs of other shapes (one row against 23): a few ulps of the logits' scale.
  const double bound = 2e-6 * want.abs().max().item<double>();
  for (auto [first, step] : {std::pair<int64_t, int64_t>{23, 1}, {1, 1}, {9, 1}, {5, 4}}) {
    const at::Tensor got = cached_logits(m, ids, {0, 0, 0}, first, step);
    const double diff = (got - want).abs().max().item<double>();
    INFO("prefill " << first << ", steps of " << step << ": max |diff| " << diff << ", bound "
                    << bound);
    CHECK(diff <= bound);
  }
  // A left-padded row gives the logits of the same tokens unpadded, at every real column.
  const at::Tensor row = ids.narrow(0, 0, 1).narrow(1, 0, 15);  // [1, 15]
  at::Tensor padded = ids.narrow(1, 0, 23).clone();
  padded.narrow(0, 0, 1).narrow(1, 8, 15).copy_(row);
  const at::Tensor got = cached_logits(m, padded, {8, 0, 0}, 12, 3);
  const double diff =
      (got.narrow(0, 0, 1).narrow(1, 8, 15) - m.forward(row)).abs().max().item<double>();
  INFO("left-padded row: max |diff| " << diff << ", bound " << bound);
  CHECK(diff <= bound);
  CHECK(at::isfinite(got).all().item<bool>());
  check_continuations_equal_forward(m, bound);
}

}  // namespace

TEST_CASE("KV-cached logits equal the full forward, for every kind of layer", "[generate]") {
  at::InferenceMode guard;
  at::manual_seed(3);
  SECTION("dense, the real 4M model") {
    check_cache_equals_forward(Decoder::load(kWiki, c10::kCPU, c10::kFloat));
  }
  SECTION("dense, stories260K (zero q/k/v biases, head_dim 8)") {
    check_cache_equals_forward(Decoder::load(kStories, c10::kCPU, c10::kFloat));
  }
  for (const char* f : {"nf4", "int4_g64", "int3_g64_asym", "fp8_e4m3", "int2_g32_fz"}) {
    SECTION(std::string("packed ") + f) {
      Decoder m = Decoder::load(kWiki, c10::kCPU, c10::kFloat);
      const auto spec = kldq::formats::FormatSpec::parse(f);
      kldq::quant::MethodOptions o;
      o.method = spec.float_zero ? kldq::quant::Method::HQQ : kldq::quant::Method::RTN;
      kldq::model::LayerFormats formats;
      for (const auto& id : m.linear_ids()) formats[id.name()] = spec;
      kldq::quant::apply_layers(m, kldq::quant::quantize_layers(m, formats, o, {}));
      check_cache_equals_forward(m);
    }
  }
  SECTION("input-scaled layers (AWQ's form)") {
    Decoder m = Decoder::load(kWiki, c10::kCPU, c10::kFloat);
    const auto spec = kldq::formats::FormatSpec::parse("int4_g64");
    auto layers = kldq::test::rtn_layers(m, spec);
    for (auto& [name, l] : layers)  // any positive per-column scale: the layer divides it out
      l.input_scale = at::rand({l.packed.in}) + 0.5;
    kldq::quant::apply_layers(m, layers);
    check_cache_equals_forward(m);
  }
}

TEST_CASE("greedy generation equals transformers' generate on stories260K", "[generate]") {
  const auto py = kldq::test::python_with("transformers torch");
  REQUIRE(py);  // scripts/setup.sh installs the venv; CI has it
  std::vector<fs::path> dirs{kStories};
  if (auto d = kldq::test::shared_data("models/stories260k-llama")) dirs.push_back(*d);
  for (const fs::path& dir : dirs) {
    // Prompts: BOS + a few story tokens, of lengths 1 to 40 (ids from the model's own range).
    at::manual_seed(11);
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t len : {1, 7, 40, 3, 19}) {
      std::vector<int64_t> p{1};
      for (int64_t i = 1; i < len; ++i) p.push_back(at::randint(3, 512, {1}).item<int64_t>());
      prompts.push_back(p);
    }
    const std::vector<std::vector<size_t>> batches{{0}, {1, 2, 3}, {4}};
    kldq::test::TempDir work("generate");
    const nlohmann::json req = {{"model", dir.string()},
                                {"prompts", prompts},
                                {"batches", batches},
                                {"max_new_tokens", 200}};
    kldq::test::write_text(work / "req.json", req.dump());
    const auto r =
        kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/generate_oracle.py " +
                                (work / "req.json").string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const auto want = nlohmann::json::parse(r.out)["new"];
    at::InferenceMode guard;
    const Decoder m = Decoder::load(dir, c10::kCPU, c10::kFloat);
    kldq::eval::GenerateOptions o;
    o.max_new_tokens = 200;
    o.stop = kldq::eval::stop_tokens(dir);
    REQUIRE(o.stop == std::vector<int64_t>{2});
    for (const auto& batch : batches) {
      std::vector<std::vector<int64_t>> part;
      for (size_t i : batch) part.push_back(prompts[i]);
      const auto got = kldq::eval::generate(m, part, o);
      for (size_t k = 0; k < batch.size(); ++k) {
        INFO(dir.filename().string()
             << " prompt " << batch[k] << " in a batch of " << batch.size());
        CHECK(got[k] == want[batch[k]].get<std::vector<int64_t>>());
        CHECK(got[k].size() >= 20);  // real text, not an immediate stop
      }
    }
  }
}

TEST_CASE("generation stops at EOS; sampling is seeded and filtered", "[generate]") {
  at::InferenceMode guard;
  const Decoder m = Decoder::load(kWiki, c10::kCPU, c10::kFloat);
  const std::vector<std::vector<int64_t>> prompts{{10, 200, 33, 7}, {99}};
  kldq::eval::GenerateOptions o;
  o.max_new_tokens = 12;
  const auto greedy = kldq::eval::generate(m, prompts, o);
  REQUIRE(greedy[0].size() == 12);
  // A stop id ends its row right after it is emitted, and only that row.
  o.stop = {greedy[0][4]};
  const auto stopped = kldq::eval::generate(m, prompts, o);
  const auto first = std::find(greedy[0].begin(), greedy[0].end(), greedy[0][4]);
  CHECK(stopped[0] == std::vector<int64_t>(greedy[0].begin(), first + 1));
  o.stop.clear();
  // top-k 1 and a tiny top-p leave only the most likely token: greedy again, at any temperature.
  o.sampling = {2.0, 1, 1.0, 5};
  CHECK(kldq::eval::generate(m, prompts, o) == greedy);
  o.sampling = {2.0, 0, 1e-6, 5};
  CHECK(kldq::eval::generate(m, prompts, o) == greedy);
  // Unfiltered sampling: a seed reproduces, another seed gives other text.
  o.sampling = {1.5, 0, 1.0, 7};
  const auto a = kldq::eval::generate(m, prompts, o), b = kldq::eval::generate(m, prompts, o);
  CHECK(a == b);
  o.sampling.seed = 8;
  CHECK(kldq::eval::generate(m, prompts, o) != a);
}

TEST_CASE("kldq generate: greedy text, JSONL output, errors", "[generate][cli]") {
  using kldq::test::run_kldq;
  kldq::test::TempDir work("generate-cli");
  const std::string model = kStories.string();
  // One prompt streams the continuation; stories260K's greedy story from "Once upon a time".
  auto r = run_kldq("generate " + model + " --prompt 'Once upon a time' --max-new-tokens 24");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("there was a little") != std::string::npos);
  // Several prompts: one JSON line each, in order, with the stop reason.
  kldq::test::write_text(work / "p.jsonl", "{\"prompt\": \"Once upon a time\"}\n\n\"Tom\"\n");
  r = run_kldq("generate " + model + " --prompts " + (work / "p.jsonl").string() +
               " --max-new-tokens 300 --base int4_g64 -o " + (work / "out.jsonl").string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  std::istringstream lines(kldq::test::read_text(work / "out.jsonl"));
  std::string line;
  std::vector<nlohmann::json> got;
  while (std::getline(lines, line)) got.push_back(nlohmann::json::parse(line));
  REQUIRE(got.size() == 2);
  CHECK(got[1]["prompt"] == "Tom");
  for (const auto& g : got) {  // eos: ended by id 2; length: all 300 tokens
    INFO(g.dump());
    CHECK((g["stop"] == "eos") == (g["tokens"].back() == 2));
    CHECK((g["stop"] == "length") == (g["tokens"].size() == 300));
  }
  // Errors: exit 2 and one line naming the limit, the file or the option.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--prompt hi --max-new-tokens 600", "max_position_embeddings"},
      {"--prompt hi --chat", "ChatML"},
      {"--prompt hi --top-k 5", "--temperature"},
      {"--prompts " + (work / "none.jsonl").string(), "none.jsonl"},
      {"", "--prompt"},
      {"--prompt hi --base int4_g64 --plan x.json", "exclude"},
  };
  kldq::test::write_text(work / "bad.jsonl", "{\"text\": 1}\n");
  for (const auto& [args, text] : bad) {
    r = run_kldq("generate " + model + " " + args);
    INFO(args << ": " << r.err);
    CHECK(r.rc == 2);
    CHECK(r.err.find(text) != std::string::npos);
  }
  r = run_kldq("generate " + model + " --prompts " + (work / "bad.jsonl").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("bad.jsonl:1") != std::string::npos);
}

TEST_CASE("kldq eval --speed: tokens/s of every batch, refused past the context",
          "[generate][cli]") {
  using kldq::test::run_kldq;
  kldq::test::TempDir work("eval-speed");
  const fs::path out = work / "m.json";
  // After a perplexity pass (under InferenceMode, which makes the packed layers' workspace).
  auto r = run_kldq("eval " + kStories.string() +
                    " --base int4_g64 --ppl " KLDQ_SOURCE_DIR
                    "/data/demo/wiki.test.head.txt --ctx 128 --speed -o " +
                    out.string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const auto j = nlohmann::json::parse(kldq::test::read_text(out));
  CHECK(j["speed"]["prompt"] == 128);
  CHECK(j["speed"]["new_tokens"] == 256);
  for (int64_t B : {1, 16}) {
    const auto& s = j["speed"][fmt::format("b{}", B)];
    INFO(s.dump());
    // Every row took the whole prompt and emitted all 256 tokens (end-of-sequence ignored): the
    // rates are those token counts over the recorded times.
    const double prefill = s["prefill_tokens_per_second"], decode = s["decode_tokens_per_second"];
    CHECK(prefill > 0);
    CHECK(decode > 0);
    CHECK(prefill * s["prefill_s"].get<double>() == Approx(128.0 * double(B)));
    CHECK(decode * s["decode_s"].get<double>() == Approx(255.0 * double(B)));
    CHECK(r.out.find(fmt::format("speed batch {}: prefill", B)) != std::string::npos);
  }
  // The run record's columns (experiments' summary.csv) from the same metrics.
  const auto rec = kldq::experiment::speed_record_metrics(j);
  CHECK(rec["decode_tps_b16"] == j["speed"]["b16"]["decode_tokens_per_second"]);
  CHECK(rec["prefill_tps_b1"] == j["speed"]["b1"]["prefill_tokens_per_second"]);
  CHECK(rec.size() == 4);
  CHECK(kldq::experiment::speed_record_metrics(nlohmann::json::object()).empty());
  // summary.csv: the four columns after the fixed ones, only when some record has them.
  nlohmann::json with = rec, without = nlohmann::json::object();
  with["point"] = 0, without["point"] = 1;
  auto header = [](const std::vector<nlohmann::json>& records) {
    const std::string csv = kldq::experiment::summary_csv(records);
    return csv.substr(0, csv.find('\r'));
  };
  CHECK(header({with, without})
            .ends_with(
                "answer_change_rate,prefill_tps_b1,decode_tps_b1,prefill_tps_b16,decode_tps_b16"));
  CHECK(header({without}).ends_with("answer_change_rate"));
  // --speed alone generates from random ids: a checkpoint without a tokenizer (synthesized) works.
  REQUIRE_FALSE(fs::exists(kldq::test::tiny_model() / "tokenizer.json"));
  REQUIRE_FALSE(fs::exists(kldq::test::tiny_model() / "tokenizer.model"));
  r = run_kldq("eval " + kldq::test::tiny_model().string() + " --speed -o " +
               (work / "tiny.json").string());
  INFO(r.err);
  CHECK(r.rc == 0);
  CHECK(nlohmann::json::parse(kldq::test::read_text(work / "tiny.json"))["speed"].contains("b16"));
  // A context shorter than prompt + new tokens (384): a usage error before loading, no output.
  const fs::path small = work / "ctx300";
  fs::create_directories(small);
  for (const auto& f : fs::directory_iterator(kStories))
    fs::copy(f.path(), small / f.path().filename());
  auto config = nlohmann::json::parse(kldq::test::read_text(small / "config.json"));
  config["max_position_embeddings"] = 300;
  kldq::test::write_text(small / "config.json", config.dump());
  r = run_kldq("eval " + small.string() + " --speed -o " + (work / "no.json").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("max_position_embeddings") != std::string::npos);
  CHECK(!fs::exists(work / "no.json"));
  r = run_kldq("eval " + kStories.string() + " --speed --mmlu-unshared -o " +
               (work / "no.json").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("--mmlu-unshared: needs --mmlu") != std::string::npos);
}
