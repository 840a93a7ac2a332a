// kldq eval: perplexity (three protocols, tests/oracle/ppl_oracle.py) and KL statistics against
// the transformers oracle (tests/oracle/eval_oracle.py, which dequantizes the nf4 checkpoint from
// its documented layout on its own), in-memory quantization equal to a quantized checkpoint,
// hand-derived summary statistics, corpora, and errors.
#include "kldq/eval/perplexity.hpp"
#include "kldq/io/corpus.hpp"
#include "support/catch.hpp"

#include <sstream>

using kldq::test::run_kldq;

TEST_CASE("summary statistics match hand-derived values", "[eval]") {
  kldq::eval::TokenScores s;
  s.nll = {1.0, 2.0, 3.0, 4.0};
  s.nll_ref = {1.0, 1.0, 3.0, 3.0};
  s.kl = {0.4, 0.1, 0.3, 0.2};
  s.same_top1 = {1, 0, 1, 1};
  const auto p = kldq::eval::ppl_summary(s.nll, 2);
  CHECK(p["ppl"].get<double>() == Approx(std::exp(2.5)));
  CHECK(p["tokens"] == 4);
  CHECK(kldq::eval::ppl_summary(s.nll, 2, "_ref")["ppl_ref"] == p["ppl"]);
  const auto k = kldq::eval::kl_summary(s);
  CHECK(k["kl_mean"].get<double>() == Approx(0.25));
  // sample sd of {.1,.2,.3,.4} = sqrt(0.05/3); stderr = sd / 2
  CHECK(k["kl_stderr"].get<double>() == Approx(std::sqrt(0.05 / 3) / 2));
  CHECK(k["kl_median"].get<double>() == Approx(0.25));
  CHECK(k["kl_p90"].get<double>() == Approx(0.37));  // 0.3 + 0.7 * (0.4 - 0.3)
  CHECK(k["kl_max"].get<double>() == Approx(0.4));
  CHECK(k["top1_agree"].get<double>() == Approx(0.75));
  CHECK(k["ln_ppl_ratio"].get<double>() == Approx(0.5));  // mean of {0, 1, 0, 1}
  CHECK(k["ln_ppl_ratio_stderr"].get<double>() == Approx(std::sqrt(1.0 / 3) / 2));
  const double dp1 = std::exp(-2.0) - std::exp(-1.0), dp3 = std::exp(-4.0) - std::exp(-3.0);
  CHECK(k["dp_mean"].get<double>() == Approx((dp1 + dp3) / 4));
  CHECK(k["dp_rms"].get<double>() == Approx(std::sqrt((dp1 * dp1 + dp3 * dp3) / 4)));
}

TEST_CASE("corpora: JSONL rows joined with blank lines; bad rows name file and line", "[eval]") {
  kldq::test::TempDir dir("corpus");
  kldq::test::write_text(dir / "a.jsonl",
                         "{\"text\": \"one\"}\n{\"text\": \"\"}\n{\"text\": \"two\"}\n");
  CHECK(kldq::io::read_corpus(dir / "a.jsonl") == "one\n\n\n\ntwo");
  kldq::test::write_text(dir / "b.txt", "raw text\n");
  CHECK(kldq::io::read_corpus(dir / "b.txt") == "raw text\n");
  kldq::test::write_text(dir / "c.jsonl", "{\"text\": \"one\"}\n{\"txt\": 1}\n");
  CHECK_THROWS_WITH(kldq::io::read_corpus(dir / "c.jsonl"), HasText("c.jsonl:2"));
}

TEST_CASE("kldq eval perplexity and KL agree with transformers", "[eval][cli][oracle]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto wiki = kldq::test::shared_data("wikitext-2/wiki.test.raw");
  if (!model || !wiki) KLDQ_SKIP("../shared/data not present");
  const auto py = kldq::test::python_with("transformers tokenizers safetensors numpy");
  if (!py) KLDQ_SKIP("no Python with transformers");
  kldq::test::TempDir dir("eval");
  kldq::test::write_text(dir / "text.txt", kldq::test::read_text(*wiki).substr(0, 40000));
  const std::string text = (dir / "text.txt").string(), q = (dir / "q").string();
  REQUIRE(run_kldq("quantize " + model->string() + " --base nf4 -o " + q).rc == 0);
  const auto r = run_kldq("eval " + q + " --reference " + model->string() + " --ppl " + text +
                          " --ctx 128 --kld --device cpu -o " + (dir / "m.json").string());
  REQUIRE(r.rc == 0);
  CHECK_THAT(r.out, HasText("ppl"));
  const auto m = nlohmann::json::parse(kldq::test::read_text(dir / "m.json"));
  const auto o = kldq::test::run_command(*py + " " KLDQ_SOURCE_DIR "/tests/oracle/eval_oracle.py " +
                                         model->string() + " " + q + " " + text + " 128");
  REQUIRE(o.rc == 0);
  INFO(o.out << o.err);
  const auto j = nlohmann::json::parse(o.out);
  CHECK(m["tokens"] == j["tokens"]);
  CHECK(m["windows"] == j["windows"]);
  CHECK(m["ppl"].get<double>() == Approx(j["ppl"].get<double>()).epsilon(1e-5));
  CHECK(m["ppl_ref"].get<double>() == Approx(j["reference_ppl"].get<double>()).epsilon(1e-5));
  CHECK(m["kl_mean"].get<double>() == Approx(j["kl_mean"].get<double>()).epsilon(1e-4));
  CHECK(m["kl_stderr"].get<double>() == Approx(j["kl_stderr"].get<double>()).epsilon(1e-3));
  CHECK(m["kl_median"].get<double>() == Approx(j["kl_median"].get<double>()).epsilon(1e-3));
  CHECK(m["kl_p99"].get<double>() == Approx(j["kl_p99"].get<double>()).epsilon(1e-3));
  CHECK(m["kl_max"].get<double>() == Approx(j["kl_max"].get<double>()).epsilon(1e-3));
  CHECK(m["top1_agree"].get<double>() == Approx(j["same_top1"].get<double>()).margin(2e-3));
  CHECK(m["ln_ppl_ratio"].get<double>() == Approx(j["ln_ppl_ratio"].get<double>()).margin(1e-5));
  CHECK(m["dp_rms"].get<double>() == Approx(j["delta_p_rms"].get<double>()).epsilon(1e-4));
  CHECK(m["kl_mean"].get<double>() > 0);
  // Memory report: nf4 linear weights are n/2 + 4 n/64 bytes = 4.5 bits per weight exactly.
  CHECK(m["bits_per_weight"].get<double>() == 4.5);
  CHECK(m["weight_bytes_by_format"]["nf4"] == m["weight_bytes_linear"]);

  // Quantizing in memory gives the same numbers as the quantized checkpoint.
  const auto r2 = run_kldq("eval " + model->string() + " --base nf4 --ppl " + text +
                           " --ctx 128 --kld --device cpu -o " + (dir / "m2.json").string());
  REQUIRE(r2.rc == 0);
  const auto m2 = nlohmann::json::parse(kldq::test::read_text(dir / "m2.json"));
  for (const char* key : {"ppl", "kl_mean", "kl_stderr", "kl_p99_9", "top1_agree", "dp_mean"})
    CHECK(m2[key] == m[key]);
}

TEST_CASE("perplexity protocols agree with transformers on WikiText-2", "[eval][cli][oracle]") {
  const auto model = kldq::test::shared_data("models/stories260k-llama");
  const auto wiki = kldq::test::shared_data("wikitext-2/wikitext-2-raw-v1.test.jsonl");
  if (!model || !wiki) KLDQ_SKIP("../shared/data not present");
  const auto py = kldq::test::python_with("transformers tokenizers");
  if (!py) KLDQ_SKIP("no Python with transformers");
  kldq::test::TempDir dir("ppl-protocols");
  kldq::test::write_text(dir / "part.jsonl", [&] {  // the first rows, for the slower protocols
    std::istringstream in(kldq::test::read_text(*wiki));
    std::string all, line;
    for (int i = 0; i < 300 && std::getline(in, line); ++i) all += line + "\n";
    return all;
  }());
  struct Case {
    std::string protocol, file, extra;
    int ctx;
  };
  // The acceptance case (whole test set, gptq, ctx 512), llama.cpp's (BOS written over each
  // window's first token: this tokenizer adds one) and the HF stride loop.
  for (const Case& c : {Case{"gptq", wiki->string(), "", 512},
                        Case{"llamacpp", (dir / "part.jsonl").string(), "", 128},
                        Case{"sliding", (dir / "part.jsonl").string(), " --stride 48", 128}}) {
    INFO(c.protocol);
    const std::string out = (dir / (c.protocol + ".json")).string();
    const auto r =
        run_kldq("eval " + model->string() + " --ppl " + c.file + " --ppl-protocol " + c.protocol +
                 " --ctx " + std::to_string(c.ctx) + c.extra + " --batch 4 --device cpu -o " + out);
    REQUIRE(r.rc == 0);
    const auto m = nlohmann::json::parse(kldq::test::read_text(out));
    const auto o = kldq::test::run_command(
        *py + " " KLDQ_SOURCE_DIR "/tests/oracle/ppl_oracle.py " + model->string() + " " + c.file +
        " " + c.protocol + " " + std::to_string(c.ctx) + (c.extra.empty() ? "" : " 48"));
    INFO(o.err);
    REQUIRE(o.rc == 0);
    const auto j = nlohmann::json::parse(o.out);
    CHECK(m["tokens"] == j["tokens"]);
    CHECK(m["windows"] == j["windows"]);
    CHECK(m["ppl"].get<double>() == Approx(j["ppl"].get<double>()).epsilon(1e-4));
  }
}

TEST_CASE("kldq eval: self-reference is exact, batch size changes nothing, saved predictions",
          "[eval][cli]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto wiki = kldq::test::shared_data("wikitext-2/wiki.test.raw");
  const auto mmlu = kldq::test::shared_data("mmlu");
  if (!model || !wiki || !mmlu) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("eval-batch");
  kldq::test::write_text(dir / "t.txt", kldq::test::read_text(*wiki).substr(0, 30000));
  const std::string common = " --ppl " + (dir / "t.txt").string() + " --ctx 96 --kld --mmlu " +
                             mmlu->string() + " --mmlu-limit 40 --device cpu";
  const std::string m = model->string();
  REQUIRE(
      run_kldq("eval " + m + " --reference " + m + common + " -o " + (dir / "self.json").string())
          .rc == 0);
  const auto self = nlohmann::json::parse(kldq::test::read_text(dir / "self.json"));
  CHECK(self["kl_mean"] == 0.0);
  CHECK(self["kl_max"] == 0.0);
  CHECK(self["top1_agree"] == 1.0);
  CHECK(self["flip_rate"] == 0.0);
  CHECK(self["answer_change_rate"] == 0.0);
  CHECK(self["ppl"] == self["ppl_ref"]);

  // nf4 in memory at batch 1 and 32: same predictions, metrics equal to 1e-6 relative.
  nlohmann::json b[2];
  for (int i = 0; i < 2; ++i) {
    const std::string out = (dir / ("b" + std::to_string(i) + ".json")).string();
    REQUIRE(run_kldq("eval " + m + " --base nf4" + common + " --batch " + (i ? "32" : "1") +
                     " -o " + out)
                .rc == 0);
    b[i] = nlohmann::json::parse(kldq::test::read_text(out));
  }
  for (const char* key :
       {"ppl", "ppl_ref", "kl_mean", "kl_stderr", "kl_median", "kl_p99", "kl_max", "top1_agree",
        "dp_mean", "dp_rms", "ln_ppl_ratio", "mmlu_acc", "flip_rate", "answer_change_rate"}) {
    INFO(key);
    CHECK(b[1][key].get<double>() == Approx(b[0][key].get<double>()).epsilon(1e-6));
  }
  std::istringstream p0(kldq::test::read_text(dir / "b0.predictions.jsonl")),
      p1(kldq::test::read_text(dir / "b1.predictions.jsonl"));
  std::string l0, l1;
  int rows = 0;
  while (std::getline(p0, l0) && std::getline(p1, l1)) {
    const auto x = nlohmann::json::parse(l0), y = nlohmann::json::parse(l1);
    CHECK(x["pred"] == y["pred"]);
    for (int c = 0; c < 4; ++c)
      // Per-question values: fp32 GEMMs of other shapes sum in another order (~1e-6).
      CHECK(x["logprobs"][c].get<double>() == Approx(y["logprobs"][c].get<double>()).epsilon(1e-5));
    ++rows;
  }
  CHECK(rows == 40);

  // Flips from the reference's saved predictions equal flips from running the reference.
  REQUIRE(run_kldq("eval " + m + " --mmlu " + mmlu->string() + " --mmlu-limit 40 --device cpu -o " +
                   (dir / "ref.json").string())
              .rc == 0);
  REQUIRE(run_kldq("eval " + m + " --base nf4 --mmlu " + mmlu->string() +
                   " --mmlu-limit 40 --device cpu --reference-predictions " +
                   (dir / "ref.predictions.jsonl").string() + " -o " +
                   (dir / "saved.json").string())
              .rc == 0);
  const auto saved = nlohmann::json::parse(kldq::test::read_text(dir / "saved.json"));
  for (const char* key : {"flip_rate", "answer_change_rate", "c2w", "w2c", "mmlu_acc_ref"})
    CHECK(saved[key] == b[0][key]);
  const auto other =
      run_kldq("eval " + m + " --base nf4 --mmlu " + mmlu->string() +
               " --mmlu-limit 40 --shots 2 --device cpu --reference-predictions " +
               (dir / "ref.predictions.jsonl").string() + " -o " + (dir / "x.json").string());
  CHECK(other.rc == 2);
  CHECK_THAT(other.err, HasText("protocol 5shot:5, this run's is 5shot:2"));
}

TEST_CASE("kldq eval errors", "[eval][cli][errors]") {
  kldq::test::TempDir dir("eval-err");
  const std::string out = (dir / "m.json").string();
  const std::string txt = (dir / "t.txt").string(), empty = (dir / "e.txt").string();
  kldq::test::write_text(dir / "t.txt", "hello");
  kldq::test::write_text(dir / "e.txt", "");
  auto fails = [&](const std::string& args, int rc, const std::string& text) {
    const auto r = run_kldq("eval " + args + " --device cpu -o " + out);
    INFO(args << "\n" << r.err);
    CHECK(r.rc == rc);
    CHECK_THAT(r.err, HasText(text));
    CHECK_FALSE(kldq::test::fs::exists(out));
  };
  // Option errors, found before any file is read.
  const std::string tiny = kldq::test::tiny_model().string();
  fails(tiny + " --ppl " + txt + " --ppl-protocol wiki", 2,
        "--ppl-protocol: unknown protocol 'wiki'");
  fails(tiny, 2, "nothing to evaluate");
  fails(tiny + " --base nf4 --plan p.json --ppl " + txt, 2, "excludes");
  fails(tiny + " --kld --ppl " + txt, 2, "--kld: needs --reference");
  fails(tiny + " --ppl " + txt + " --kld --reference " + (dir / "nope").string(), 2,
        "nope: no such checkpoint directory");
  fails(tiny + " --mmlu x --mmlu-protocol chat0shot --shots 2", 2,
        "chat0shot is a 0-shot protocol");
  fails(tiny + " --ppl " + txt + " --ppl-protocol sliding --ctx 64 --stride 65", 2,
        "--stride 65 exceeds the window");
  fails(tiny + " --ppl " + txt + " --stride 8", 2, "--stride: only the sliding protocol");

  // Data errors need a model with a tokenizer.
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  if (!model) KLDQ_SKIP("../shared/data not present");
  const std::string m = model->string();
  fails(m + " --ppl " + empty, 2, "e.txt is empty");
  fails(m + " --ppl " + txt + " --ctx 64", 2, "t.txt has 3 tokens, fewer than one window of 64");
  fails(m + " --mmlu " + (dir / "none").string(), 2, "none: no such file");
  kldq::test::fs::create_directories(dir / "mm/test");
  kldq::test::write_text(dir / "mm/test/x_test.csv", "Q,a,b,c,d,A\nQ,a,b,c,A\n");
  fails(m + " --mmlu " + (dir / "mm").string() + " --shots 0", 1,
        "x_test.csv:2: expected 6 fields");
  kldq::test::write_text(dir / "mm/test/x_test.csv", "Q,a,b,c,d,A\n");
  fails(m + " --mmlu " + (dir / "mm").string(), 2, "MMLU subject x: 0 dev examples, 5 shots");
}

TEST_CASE("kldq eval on CUDA in fp32 reproduces the CPU", "[eval][cli][cuda]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto wiki = kldq::test::shared_data("wikitext-2/wiki.test.raw");
  const auto mmlu = kldq::test::shared_data("mmlu");
  if (!model || !wiki || !mmlu) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("eval-cuda");
  kldq::test::write_text(dir / "t.txt", kldq::test::read_text(*wiki).substr(0, 60000));
  nlohmann::json m[2];
  std::string preds[2];
  for (int i = 0; i < 2; ++i) {
    const std::string out = (dir / (i ? "cuda.json" : "cpu.json")).string();
    REQUIRE(run_kldq("eval " + model->string() + " --base nf4 --ppl " + (dir / "t.txt").string() +
                     " --ppl-protocol sliding --ctx 256 --kld --mmlu " + mmlu->string() +
                     " --mmlu-limit 60 --batch 8 --dtype fp32 --device " + (i ? "cuda" : "cpu") +
                     " -o " + out)
                .rc == 0);
    m[i] = nlohmann::json::parse(kldq::test::read_text(out));
    preds[i] =
        kldq::test::read_text(dir / (i ? "cuda.predictions.jsonl" : "cpu.predictions.jsonl"));
  }
  for (const char* key :
       {"ppl", "ppl_ref", "kl_mean", "kl_p99", "dp_rms", "mmlu_acc", "flip_rate"}) {
    INFO(key);
    CHECK(m[1][key].get<double>() == Approx(m[0][key].get<double>()).epsilon(1e-4));
  }
  CHECK(m[1]["tokens"] == m[0]["tokens"]);
  CHECK(m[1]["peak_cuda_bytes"].get<int64_t>() > 0);
  std::istringstream a(preds[0]), b(preds[1]);
  std::string x, y;
  int rows = 0;
  while (std::getline(a, x) && std::getline(b, y)) {
    CHECK(nlohmann::json::parse(x)["pred"] == nlohmann::json::parse(y)["pred"]);
    ++rows;
  }
  CHECK(rows == 60);
}
