// Evaluation shards: perplexity, KL and MMLU computed in shards and merged equal the whole run's
// metrics and predictions exactly (gptq and sliding windows, with a shape change between
// batches); merging refuses shards that do not belong together; what cannot shard is refused.
#include "support/catch.hpp"

using kldq::test::run_kldq;

namespace {

// The metrics of two runs of one evaluation, every key equal except the runs' own figures.
void check_same_metrics(nlohmann::json a, nlohmann::json b) {
  for (const char* k : {"seconds", "seconds_ppl", "seconds_mmlu", "tokens_per_second",
                        "peak_cuda_bytes", "peak_host_bytes", "shards"})
    a.erase(k), b.erase(k);
  if (a.contains("mmlu_settings")) a["mmlu_settings"].erase("predictions");
  if (b.contains("mmlu_settings")) b["mmlu_settings"].erase("predictions");
  for (const auto& [k, v] : a.items()) {
    INFO(k);
    CHECK(b[k] == v);  // numbers bit for bit
  }
  CHECK(a.size() == b.size());
}

}  // namespace

TEST_CASE("kldq eval --shard, --merge: the whole run's metrics and predictions exactly",
          "[eval][cli]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto wiki = kldq::test::shared_data("wikitext-2/wiki.test.raw");
  const auto mmlu = kldq::test::shared_data("mmlu");
  if (!model || !wiki || !mmlu) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("eval-shards");
  auto path = [&](const std::string& name) { return (dir / name).string(); };
  kldq::test::write_text(dir / "t.txt", kldq::test::read_text(*wiki).substr(0, 20000));
  // 110 questions: two subjects (abstract_algebra has 100), one shot to keep prompts short.
  const std::string full = "eval " + model->string() + " --base nf4 --ppl " + path("t.txt") +
                           " --ctx 96 --kld --mmlu " + mmlu->string() +
                           " --mmlu-limit 110 --shots 1 --device cpu --batch 4";
  const std::string sliding = "eval " + model->string() + " --base nf4 --ppl " + path("t.txt") +
                              " --ppl-protocol sliding --ctx 96 --stride 40 --kld --device cpu "
                              "--batch 3";
  // Two batches of windows and three shards: the last scores no window.
  kldq::test::write_text(dir / "few.txt", kldq::test::read_text(*wiki).substr(0, 400));
  const std::string few = "eval " + model->string() + " --base nf4 --ppl " + path("few.txt") +
                          " --ctx 64 --kld --device cpu --batch 2";
  auto ok = [&](const std::string& args) {
    const auto r = run_kldq(args);
    INFO(args << "\n" << r.err);
    REQUIRE(r.rc == 0);
  };
  for (const auto& [name, command, n] :
       {std::tuple{"full", full, 3}, std::tuple{"sliding", sliding, 2},
        std::tuple{"few", few, 3}}) {
    INFO(name);
    const std::string whole = path(std::string(name) + ".json");
    ok(command + " -o " + whole);
    std::string shards;
    for (int i = n - 1; i >= 0; --i) {  // any order
      const std::string s = path(fmt::format("{}-{}.json", name, i));
      ok(command + fmt::format(" --shard {}/{} -o {}", i, n, s));
      shards += " " + s;
    }
    const std::string merged = path(std::string(name) + "-merged.json");
    ok("eval --merge" + shards + " -o " + merged);
    const auto w = nlohmann::json::parse(kldq::test::read_text(whole));
    const auto m = nlohmann::json::parse(kldq::test::read_text(merged));
    CHECK(m["shards"] == n);
    if (std::string(name) == "few") {  // the premise: the last shard has no window
      CHECK(w["windows"].get<int>() <= 4);
      const auto last = nlohmann::json::parse(kldq::test::read_text(dir / "few-2.json"));
      CHECK(last["shard_data"]["ppl"]["windows"].empty());
    }
    CHECK(w.contains("kl_p99"));
    check_same_metrics(w, m);
    if (w.contains("mmlu_acc")) {
      CHECK(w["mmlu_n"] == 110);
      CHECK(w.contains("flip_rate"));
      CHECK(kldq::test::read_text(dir / "full-merged.predictions.jsonl") ==
            kldq::test::read_text(dir / "full.predictions.jsonl"));
    }
  }

  // Shards that do not belong together, and what cannot be sharded.
  const std::string s0 = path("full-0.json"), s1 = path("full-1.json"), s2 = path("full-2.json");
  auto edited = [&](const std::string& name, auto&& edit) {
    auto j = nlohmann::json::parse(kldq::test::read_text(dir / "full-1.json"));
    edit(j);
    kldq::test::write_text(dir / name, j.dump());
    return path(name);
  };
  const std::string other_batch = edited("b.json", [](auto& j) { j["batch"] = 8; });
  const std::string other_ctx = edited("c.json", [](auto& j) { j["ppl_settings"]["ctx"] = 64; });
  const std::string twice =
      edited("w.json", [](auto& j) { j["shard_data"]["ppl"]["windows"][0][0] = 0; });
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"eval --merge " + s0 + " " + s1, "shard(s) 2/3 missing"},
      {"eval --merge " + s0 + " " + other_batch + " " + s2, "disagree on batch: 4 vs 8"},
      {"eval --merge " + s0 + " " + other_ctx + " " + s2, "disagree on ppl_settings.ctx"},
      {"eval --merge " + s0 + " " + twice + " " + s2, "window 0 is also in another shard"},
      {"eval --merge " + s0 + " " + path("full.json"), "not a shard"},
      {"eval --merge " + s0 + " " + s1 + " " + s2 + " --ppl " + path("t.txt"),
       "give only the shard files"},
      {full + " --shard 0/2 --speed", "--speed: not with --shard"},
      {full + " --shard 3/2", "--shard 3/2: expected i/n"},
  };
  for (const auto& [args, text] : bad) {
    const auto r = run_kldq(args + " -o " + path("bad.json"));
    INFO(args << "\n" << r.err);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(text));
    CHECK_FALSE(kldq::test::fs::exists(dir / "bad.json"));
  }
}
