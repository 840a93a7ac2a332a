// The kldq binary: help, exit codes, synth + inspect end to end, and error messages.
#include <fmt/format.h>

#include <sstream>

#include "kldq/calib/calibration.hpp"
#include "kldq/eval/evaluate.hpp"
#include "kldq/eval/generate_task.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/profile/task.hpp"
#include "kldq/quant/gptq.hpp"
#include "support/catch.hpp"

using kldq::test::run_kldq;

TEST_CASE("kldq --help lists the subcommands; usage errors exit 2", "[cli]") {
  const auto help = run_kldq("--help");
  CHECK(help.rc == 0);
  for (const char* cmd :
       {"inspect", "synth", "profile", "plan", "quantize", "eval", "run", "report"})
    CHECK_THAT(help.out, HasText(cmd));
  const auto report = run_kldq("report no-such-results-dir");
  CHECK(report.rc == 2);
  CHECK_THAT(report.err, HasText("no-such-results-dir: not a results directory"));
  CHECK(run_kldq("").rc == 2);
  CHECK(run_kldq("inspect").rc == 2);  // missing MODEL
  CHECK(run_kldq("frobnicate").rc == 2);
  CHECK(run_kldq("inspect " + kldq::test::tiny_model().string() + " --no-such-option").rc == 2);
}

namespace {

// Whether `help` shows `value` as the default of `option`: CLI11 2.1 renders "--opt TYPE=VALUE",
// later versions "--opt TYPE [VALUE]".
bool shows_default(const std::string& help, const std::string& option, const std::string& value) {
  std::istringstream in(help);
  for (std::string line; std::getline(in, line);)
    if (line.find("  " + option + " ") != std::string::npos)
      return line.find("=" + value) != std::string::npos ||
             line.find("[" + value + "]") != std::string::npos;
  return false;
}

}  // namespace

TEST_CASE("help renders the defaults the library uses", "[cli]") {
  const auto profile = run_kldq("profile --help");
  REQUIRE(profile.rc == 0);
  const kldq::calib::CalibrationSpec calib;
  CHECK(shows_default(profile.out, "--samples", fmt::format("{}", calib.samples)));
  CHECK(shows_default(profile.out, "--seq-len", fmt::format("{}", calib.seq_len)));
  CHECK(shows_default(profile.out, "--damp", fmt::format("{}", kldq::quant::GptqOptions{}.damp)));
  CHECK(shows_default(profile.out, "--batch",
                      fmt::format("{}", kldq::profile::ProfileRequest{}.batch)));
  CHECK(shows_default(profile.out, "--mode", "quantize-one"));
  CHECK(shows_default(profile.out, "--method", "rtn"));
  const auto eval = run_kldq("eval --help");
  REQUIRE(eval.rc == 0);
  // A command and its experiment stage batch alike (experiment::EvalSpec's 8).
  CHECK(shows_default(eval.out, "--batch", fmt::format("{}", kldq::eval::EvalRequest{}.batch)));
  CHECK(kldq::eval::EvalRequest{}.batch == kldq::experiment::EvalSpec{}.batch);
  CHECK(shows_default(eval.out, "--ppl-protocol", "gptq"));
  CHECK(shows_default(eval.out, "--shots", std::to_string(kldq::eval::MmluOptions{}.shots)));
  const auto gen = run_kldq("generate --help");
  REQUIRE(gen.rc == 0);
  CHECK(shows_default(gen.out, "--max-new-tokens",
                      fmt::format("{}", kldq::eval::GenerateRequest{}.max_new_tokens)));
}

TEST_CASE("-v and -q work after the subcommand too; run takes -o", "[cli]") {
  kldq::test::TempDir dir("cli-verbosity");
  const std::string eval = "eval " KLDQ_SOURCE_DIR
                           "/models/wikitext-qwen2-4m --ppl " KLDQ_SOURCE_DIR
                           "/data/demo/wiki.test.head.txt --ctx 64 --device cpu -o " +
                           (dir / "m.json").string();
  // eval says what it streamed at debug level (-v), and what it evaluates at info level (not -q).
  const auto plain = run_kldq(eval);
  const auto before = run_kldq("-v " + eval);
  const auto after = run_kldq(eval + " -v");
  const auto quiet = run_kldq(eval + " -q");
  REQUIRE(plain.rc == 0);
  REQUIRE(after.rc == 0);
  REQUIRE(quiet.rc == 0);
  CHECK_THAT(plain.err, HasText("info") && !HasText("debug"));
  CHECK_THAT(before.err, HasText("debug: eval:"));
  CHECK_THAT(after.err, HasText("debug: eval:"));
  CHECK_THAT(quiet.err, !HasText("info"));
  const auto dry = run_kldq("run " KLDQ_SOURCE_DIR "/configs/demo.yaml --dry-run -o " +
                            (dir / "results").string());
  REQUIRE(dry.rc == 0);
  CHECK_THAT(dry.out, HasText("output " + (dir / "results").string()));
}

TEST_CASE("synth tiny then inspect --json reports hand-derived counts", "[cli]") {
  kldq::test::TempDir dir("cli");
  const auto model = (dir / "m").string();
  const auto s = run_kldq("synth --shape tiny --seed 3 -o " + model);
  REQUIRE(s.rc == 0);
  const auto r = run_kldq("inspect --json " + model);
  REQUIRE(r.rc == 0);
  const auto j = nlohmann::json::parse(r.out);
  // embed 512x64 + 2 blocks x (q 64x64+64, k,v 32x64+32, o 64x64, mlp 3x64x172, norms 2x64)
  // + final norm 64 (tied head).
  const int64_t block = 64 * 64 + 64 + 2 * (32 * 64 + 32) + 64 * 64 + 3 * 64 * 172 + 2 * 64;
  const int64_t params = 512 * 64 + 2 * block + 64;
  CHECK(j["parameters"].get<int64_t>() == params);
  CHECK(j["linear_layers"].size() == 14);
  CHECK(j["linear_layers"][0]["id"] == "model.layers.0.self_attn.q_proj");
  CHECK(j["tensor_bytes"].get<int64_t>() == 2 * params);  // bf16
  CHECK(j["file_bytes"].get<int64_t>() > j["tensor_bytes"].get<int64_t>());
  // Same seed, same bytes; refuses to overwrite without --force.
  const auto again = run_kldq("synth --shape tiny --seed 3 -o " + model);
  CHECK(again.rc == 2);
  CHECK_THAT(again.err, HasText("already exists"));
  REQUIRE(run_kldq("synth --shape tiny --seed 3 --force -o " + (dir / "m2").string()).rc == 0);
  CHECK(kldq::test::read_text(dir / "m" / "model.safetensors") ==
        kldq::test::read_text(dir / "m2" / "model.safetensors"));
}

TEST_CASE("CLI errors name what is wrong and leave no output", "[cli][errors]") {
  kldq::test::TempDir dir("cli-err");
  const auto missing = run_kldq("inspect " + (dir / "nothing").string());
  CHECK(missing.rc == 2);  // a wrong path on the command line is a usage error
  CHECK_THAT(missing.err, HasText("nothing/config.json: cannot open (no such file)"));
  const auto shape = run_kldq("synth --shape qwen9 -o " + (dir / "x").string());
  CHECK(shape.rc == 2);
  CHECK_THAT(shape.err, HasText("qwen9") && HasText("qwen2.5-1.5b"));
  CHECK_FALSE(kldq::test::fs::exists(dir / "x"));
  // --force replaces checkpoints only, never "." or an unrelated directory.
  kldq::test::fs::create_directories(dir / "notes");
  kldq::test::write_text(dir / "notes" / "keep.txt", "keep");
  const auto force = run_kldq("synth --shape tiny --force -o " + (dir / "notes").string());
  CHECK(force.rc == 2);
  CHECK_THAT(force.err, HasText("kldq did not write it"));
  CHECK(kldq::test::read_text(dir / "notes" / "keep.txt") == "keep");
  const auto dot = run_kldq("synth --shape tiny --force -o " + (dir / "notes").string() + "/..");
  CHECK(dot.rc == 2);
  CHECK(kldq::test::fs::exists(dir / "notes" / "keep.txt"));
  // A trailing slash names the same directory; replacing a checkpoint leaves one clean copy.
  const auto m = (dir / "m").string();
  REQUIRE(run_kldq("synth --shape tiny -o " + m + "/").rc == 0);
  REQUIRE(run_kldq("synth --shape tiny --seed 9 --force -o " + m + "/").rc == 0);
  CHECK(std::distance(kldq::test::fs::directory_iterator(dir.path()),
                      kldq::test::fs::directory_iterator()) == 2);  // notes, m
  kldq::test::fs::create_directories(dir / "bad");
  kldq::test::write_text(dir / "bad" / "config.json", "{\"model_type\": \"qwen2\"}");
  const auto cfg = run_kldq("inspect " + (dir / "bad").string());
  CHECK(cfg.rc == 2);
  CHECK_THAT(cfg.err, HasText("config.json") && HasText("hidden_size"));
  kldq::test::fs::create_directories(dir / "pickle");
  kldq::test::fs::copy_file(kldq::test::tiny_model() / "config.json",
                            dir / "pickle" / "config.json");
  kldq::test::write_text(dir / "pickle" / "pytorch_model.bin", "x");
  const auto pk = run_kldq("inspect " + (dir / "pickle").string());
  CHECK(pk.rc == 2);
  CHECK_THAT(pk.err, HasText("pickle"));
  // --max-gpu-memory: a malformed size, and a cap on a CPU run, are usage errors.
  const auto tiny = kldq::test::tiny_model().string();
  for (const char* bad : {"22XB", "-3GiB", "GiB", "0"}) {
    const auto r = run_kldq("logits " + tiny + " --ids x.json -o y --device cpu --max-gpu-memory " +
                            std::string(bad));
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText("--max-gpu-memory") && HasText("expected a positive size"));
  }
  const auto cpu =
      run_kldq("logits " + tiny + " --ids x.json -o y --device cpu --max-gpu-memory 2GiB");
  CHECK(cpu.rc == 2);
  CHECK_THAT(cpu.err, HasText("--max-gpu-memory 2GiB: needs a CUDA device"));
}

TEST_CASE("kldq tokenize: ids, tokens, counts, JSONL, decode, errors", "[cli][tokenizer]") {
  const auto qwen = kldq::test::shared_data("qwen-tokenizer");
  if (!qwen) KLDQ_SKIP("needs ../shared/data/qwen-tokenizer");
  kldq::test::TempDir dir("cli-tok");
  const std::string m = " --model " + qwen->string() + " ";
  kldq::test::write_text(dir / "in.txt", "Hello world<|im_end|>");
  // Ids as the tokenizers library gives them (tests/io/test_tokenizer.cpp checks thousands).
  CHECK(nlohmann::json::parse(run_kldq("tokenize" + m + (dir / "in.txt").string()).out) ==
        nlohmann::json::parse("[9707, 1879, 151645]"));
  CHECK(run_kldq("tokenize --count" + m + (dir / "in.txt").string()).out == "3\n");
  CHECK(nlohmann::json::parse(run_kldq("tokenize --tokens" + m + (dir / "in.txt").string()).out) ==
        nlohmann::json::parse(R"(["Hello", "Ġworld", "<|im_end|>"])"));
  kldq::test::write_text(dir / "ids.json", "[9707, 1879, 151645]");
  CHECK(run_kldq("tokenize --decode --keep-special" + m + (dir / "ids.json").string()).out ==
        "Hello world<|im_end|>");
  CHECK(run_kldq("tokenize --decode" + m + (dir / "ids.json").string()).out == "Hello world");
  kldq::test::write_text(dir / "big.json", "[9707, 4294967297]");
  const auto big = run_kldq("tokenize --decode" + m + (dir / "big.json").string());
  CHECK(big.rc == 2);
  CHECK_THAT(big.err, HasText("[1]: expected a token id"));
  kldq::test::write_text(dir / "in.jsonl", "{\"text\": \"Hello\"}\n{\"text\": \" world\"}\n");
  CHECK(run_kldq("tokenize --jsonl" + m + (dir / "in.jsonl").string()).out == "[9707]\n[1879]\n");
  kldq::test::write_text(dir / "bad.jsonl", "{\"text\": \"Hello\"}\n{\"txt\": 1}\n");
  const auto bad = run_kldq("tokenize --jsonl" + m + (dir / "bad.jsonl").string());
  CHECK(bad.rc == 2);
  CHECK_THAT(bad.err, HasText("bad.jsonl:2"));
  // a hostile row: nesting bounded as in every JSON input (exit 2, naming the line)
  kldq::test::write_text(dir / "deep.jsonl", "\n" + std::string(500, '[') + std::string(500, ']'));
  const auto deep = run_kldq("tokenize --jsonl" + m + (dir / "deep.jsonl").string());
  CHECK(deep.rc == 2);
  CHECK_THAT(deep.err, HasText("deep.jsonl:2: JSON nested deeper than 128 levels"));
  kldq::test::write_text(dir / "latin1.txt", "caf\xe9!");
  const auto lat = run_kldq("tokenize --tokens" + m + (dir / "latin1.txt").string());
  CHECK(lat.rc == 0);
  CHECK_THAT(lat.err, HasText("offset 3"));
  CHECK(run_kldq("tokenize --model " + (dir / "nothing").string() + " x").rc == 2);
}

TEST_CASE("kldq --max-gpu-memory caps the CUDA allocator", "[cli][cuda]") {
  kldq::test::TempDir dir("cli-cap");
  const auto tiny = kldq::test::tiny_model().string();
  kldq::test::write_text(dir / "ids.json", "[[1, 2, 3, 4]]");
  const std::string cmd = "logits " + tiny + " --ids " + (dir / "ids.json").string() +
                          " --device cuda -o " + (dir / "l.safetensors").string() +
                          " --max-gpu-memory ";
  // The caching allocator reserves at least a 2 MiB segment: a 1 MiB cap fails the first one.
  const auto tight = run_kldq(cmd + "1MiB");
  CHECK(tight.rc == 1);
  // One line naming the request, the budget and the options that lower the need.
  CHECK_THAT(tight.err, HasText("kldq error: out of GPU memory: tried to allocate") &&
                            HasText("(budget --max-gpu-memory 1MiB); lower --batch"));
  CHECK(std::count(tight.err.begin(), tight.err.end(), '\n') == 1);
  CHECK_FALSE(kldq::test::fs::exists(dir / "l.safetensors"));
  const auto huge = run_kldq(cmd + "100000GiB");
  CHECK(huge.rc == 2);
  CHECK_THAT(huge.err, HasText("is not within"));
  CHECK(run_kldq(cmd + "1GiB").rc == 0);
}
