// kldq eval: perplexity and KL statistics against the transformers oracle
// (tests/oracle/eval_oracle.py, which dequantizes the nf4 checkpoint from its documented layout
// on its own), in-memory quantization equal to a quantized checkpoint, hand-derived summary
// statistics, corpora, and errors.
#include "kldq/eval/perplexity.hpp"
#include "kldq/io/corpus.hpp"
#include "support/catch.hpp"

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
  const auto k = kldq::eval::kl_summary(s);
  CHECK(k["mean"].get<double>() == Approx(0.25));
  // sample sd of {.1,.2,.3,.4} = sqrt(0.05/3); stderr = sd / 2
  CHECK(k["stderr"].get<double>() == Approx(std::sqrt(0.05 / 3) / 2));
  CHECK(k["median"].get<double>() == Approx(0.25));
  CHECK(k["p90"].get<double>() == Approx(0.37));  // 0.3 + 0.7 * (0.4 - 0.3)
  CHECK(k["max"].get<double>() == Approx(0.4));
  CHECK(k["same_top1"].get<double>() == Approx(0.75));
  CHECK(k["ln_ppl_ratio"].get<double>() == Approx(0.5));  // mean of {0, 1, 0, 1}
  CHECK(k["ln_ppl_ratio_stderr"].get<double>() == Approx(std::sqrt(1.0 / 3) / 2));
  const double dp1 = std::exp(-2.0) - std::exp(-1.0), dp3 = std::exp(-4.0) - std::exp(-3.0);
  CHECK(k["delta_p_mean"].get<double>() == Approx((dp1 + dp3) / 4));
  CHECK(k["delta_p_rms"].get<double>() == Approx(std::sqrt((dp1 * dp1 + dp3 * dp3) / 4)));
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
  CHECK(m["ppl"]["tokens"] == j["tokens"]);
  CHECK(m["ppl"]["windows"] == j["windows"]);
  CHECK(m["ppl"]["ppl"].get<double>() == Approx(j["ppl"].get<double>()).epsilon(1e-5));
  CHECK(m["reference_ppl"]["ppl"].get<double>() ==
        Approx(j["reference_ppl"].get<double>()).epsilon(1e-5));
  const auto& k = m["kld"];
  CHECK(k["mean"].get<double>() == Approx(j["kl_mean"].get<double>()).epsilon(1e-3));
  CHECK(k["stderr"].get<double>() == Approx(j["kl_stderr"].get<double>()).epsilon(1e-3));
  CHECK(k["median"].get<double>() == Approx(j["kl_median"].get<double>()).epsilon(1e-3));
  CHECK(k["p99"].get<double>() == Approx(j["kl_p99"].get<double>()).epsilon(1e-3));
  CHECK(k["max"].get<double>() == Approx(j["kl_max"].get<double>()).epsilon(1e-3));
  CHECK(k["same_top1"].get<double>() == Approx(j["same_top1"].get<double>()).margin(2e-3));
  CHECK(k["ln_ppl_ratio"].get<double>() == Approx(j["ln_ppl_ratio"].get<double>()).margin(1e-5));
  CHECK(k["delta_p_rms"].get<double>() == Approx(j["delta_p_rms"].get<double>()).epsilon(1e-4));
  CHECK(k["mean"].get<double>() > 0);

  // Quantizing in memory gives the same numbers as the quantized checkpoint.
  const auto r2 = run_kldq("eval " + model->string() + " --base nf4 --ppl " + text +
                           " --ctx 128 --kld --device cpu -o " + (dir / "m2.json").string());
  REQUIRE(r2.rc == 0);
  const auto m2 = nlohmann::json::parse(kldq::test::read_text(dir / "m2.json"));
  CHECK(m2["ppl"]["ppl"] == m["ppl"]["ppl"]);
  CHECK(m2["kld"] == m["kld"]);
}

TEST_CASE("kldq eval errors", "[eval][cli][errors]") {
  kldq::test::TempDir dir("eval-err");
  const std::string tiny = kldq::test::tiny_model().string(), out = (dir / "m.json").string();
  kldq::test::write_text(dir / "t.txt", "hello");
  const auto proto = run_kldq("eval " + tiny + " --ppl-protocol llamacpp --ppl t -o " + out);
  CHECK(proto.rc == 2);
  CHECK_THAT(proto.err, HasText("llamacpp: not built yet"));
  CHECK(run_kldq("eval " + tiny + " -o " + out).rc == 2);
  CHECK(run_kldq("eval " + tiny + " --base nf4 --plan p.json --ppl t -o " + out).rc == 2);
  const auto kld = run_kldq("eval " + tiny + " --kld --ppl " + (dir / "t.txt").string() +
                            " --device cpu -o " + out);
  CHECK(kld.rc == 2);
  CHECK_THAT(kld.err, HasText("--kld: needs --reference"));
  CHECK_FALSE(kldq::test::fs::exists(out));
}
