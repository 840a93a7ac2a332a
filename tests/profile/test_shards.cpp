// Profile shards: every shard's units are bit-identical to the same units of the whole profile,
// and --merge puts them back into the profile one run writes (proxy correlations included);
// merging refuses shards that are missing, repeated, of another split or of another run.
#include <ATen/ATen.h>

#include "kldq/core/device.hpp"
#include "kldq/core/shard.hpp"
#include "kldq/io/csv.hpp"
#include "kldq/profile/merge.hpp"
#include "kldq/profile/profile.hpp"
#include "support/catch.hpp"

namespace profile = kldq::profile;
using kldq::test::run_kldq;

namespace {

// The keys a run records about itself, which differ between runs of the same profile.
const std::set<std::string> kRunKeys = {"seconds",         "seconds_profile", "peak_cuda_bytes",
                                        "peak_host_bytes", "streamed_bytes",  "shards"};

void check_same_profile(nlohmann::json a, nlohmann::json b) {
  for (const std::string& k : kRunKeys) a.erase(k), b.erase(k);
  REQUIRE(a["units"].size() == b["units"].size());
  for (size_t i = 0; i < a["units"].size(); ++i) {
    INFO(a["units"][i]["id"]);
    CHECK(a["units"][i] == b["units"][i]);  // every number bit for bit
  }
  for (const auto& [k, v] : a.items()) {
    INFO(k);
    CHECK(b[k] == v);
  }
  CHECK(a.size() == b.size());
}

}  // namespace

TEST_CASE("profile shards: the same units bit for bit; merged equals the whole profile",
          "[profile]") {
  auto m = kldq::model::Decoder::load(kldq::test::tiny_model(), c10::Device(c10::kCPU), at::kFloat);
  at::manual_seed(5);
  const at::Tensor ids = at::randint(m.config().vocab_size, {6, 24}, at::kLong);
  profile::Options o;
  o.base = kldq::formats::FormatSpec::parse("int3_g32");
  o.batch = 4;
  o.granularity = GENERATE(profile::Granularity::LINEAR, profile::Granularity::HALF_BLOCK);
  o.mode = GENERATE(profile::Mode::QUANTIZE_ONE, profile::Mode::RESTORE_ONE);
  o.proxies = true;
  const auto layers = kldq::test::rtn_layers(m, o.base);
  const profile::Result whole = profile::run_profile(m, ids, layers, o);
  const nlohmann::json whole_json =
      profile::to_json(profile::record_of(whole, o, kldq::quant::Method::RTN));
  REQUIRE(whole_json.contains("proxies"));
  const size_t n = 3;
  std::vector<profile::ShardFile> files;
  for (size_t i : {2, 0, 1}) {  // any order
    o.shard = {i, n};
    const profile::Result r = profile::run_profile(m, ids, layers, o);
    CHECK(r.units_total == whole.units.size());
    REQUIRE(r.units.size() == o.shard.size_of(whole.units.size()));
    for (size_t k = 0; k < r.units.size(); ++k) {
      const profile::UnitResult& u = whole.units[i + k * n];
      CHECK(r.units[k].unit.id == u.unit.id);
      CHECK(r.units[k].kl.mean == u.kl.mean);  // exactly
      CHECK(r.units[k].kl.stderr_ == u.kl.stderr_);
    }
    CHECK(r.baseline.mean == whole.baseline.mean);
    files.push_back({"shard" + std::to_string(i),
                     profile::to_json(profile::record_of(r, o, kldq::quant::Method::RTN))});
  }
  CHECK_FALSE(files[0].json["proxies"].contains("spearman"));  // only over every unit
  nlohmann::json merged = profile::to_json(profile::merge_shards(files));
  CHECK(merged["shards"] == n);
  check_same_profile(merged, whole_json);
}

TEST_CASE("profile on several devices: groups handed out, the profile of one device bit for bit",
          "[profile]") {
  // Three CPU "devices" (three copies of the model, three threads): the scheduling, the per-worker
  // passes and the assembly are those of several GPUs.
  auto load = [] {
    return kldq::model::Decoder::load(kldq::test::tiny_model(), c10::Device(c10::kCPU), at::kFloat);
  };
  auto m0 = load(), m1 = load(), m2 = load();
  at::manual_seed(8);
  const at::Tensor ids = at::randint(m0.config().vocab_size, {5, 20}, at::kLong);
  profile::Options o;
  o.base = kldq::formats::FormatSpec::parse("nf4");
  o.batch = 2;
  o.group = 2;  // several groups per worker
  o.proxies = true;
  o.mode = GENERATE(profile::Mode::QUANTIZE_ONE, profile::Mode::RESTORE_ONE);
  const auto layers = kldq::test::rtn_layers(m0, o.base);
  const nlohmann::json one = profile::to_json(
      profile::record_of(profile::run_profile(m0, ids, layers, o), o, kldq::quant::Method::RTN));
  const profile::Result r = profile::run_profile({&m0, &m1, &m2}, ids, layers, o);
  check_same_profile(profile::to_json(profile::record_of(r, o, kldq::quant::Method::RTN)), one);
  o.shard = {1, 2};  // a shard on several devices: its units only
  const profile::Result s = profile::run_profile({&m1, &m2}, ids, layers, o);
  REQUIRE(s.units.size() == o.shard.size_of(r.units.size()));
  for (size_t k = 0; k < s.units.size(); ++k)
    CHECK(s.units[k].kl.mean == r.units[1 + 2 * k].kl.mean);
}

TEST_CASE("Shard: i/n parsed, items owned round-robin, bad text refused", "[profile]") {
  const kldq::Shard s = kldq::parse_shard("2/5", "--shard", "units");
  CHECK(s.index == 2);
  CHECK(s.count == 5);
  CHECK(s.name() == "2/5");
  CHECK(s.owns(7));
  CHECK_FALSE(s.owns(8));
  CHECK(s.size_of(12) == 2);  // 2, 7
  CHECK(s.size_of(13) == 3);  // 2, 7, 12
  CHECK(s.size_of(2) == 0);
  CHECK(kldq::parse_shard("", "--shard", "units").whole());
  for (const char* bad : {"5/5", "1", "a/b", "-1/2", "0/0", "0.5/2", "1/", "/2", "1/2/3", "+1/2"})
    CHECK_THROWS_WITH(kldq::parse_shard(bad, "--shard", "units"),
                      HasText(std::string("--shard ") + bad + ": expected i/n"));
}

TEST_CASE("kldq profile --shard, --merge on stories260K; merging refuses what does not belong",
          "[profile][cli]") {
  const auto model = kldq::test::shared_data("models/stories260k-qwen2");
  const auto calib = kldq::test::shared_data("wikitext-2/valid.tokenized.txt");
  if (!model || !calib) KLDQ_SKIP("../shared/data not present");
  kldq::test::TempDir dir("shards");
  const std::string common = "profile " + model->string() + " --base nf4 --calib " +
                             calib->string() +
                             " --samples 8 --seq-len 128 --device cpu --proxies --mode restore-one";
  auto path = [&](const std::string& name) { return (dir / name).string(); };
  auto ok = [&](const std::string& args) {
    const auto r = run_kldq(args);
    INFO(args << "\n" << r.err);
    REQUIRE(r.rc == 0);
    return r;
  };
  ok(common + " -o " + path("whole.json"));
  for (int i = 0; i < 2; ++i)
    CHECK_THAT(
        ok(common + " --shard " + std::to_string(i) + "/2 -o " + path(fmt::format("s{}.json", i)))
            .out,
        HasText(fmt::format("shard {}/2 of 35 units", i)));
  ok("profile --merge " + path("s1.json") + " " + path("s0.json") + " --csv " + path("m.csv") +
     " -o " + path("merged.json"));
  const auto whole = nlohmann::json::parse(kldq::test::read_text(dir / "whole.json"));
  check_same_profile(nlohmann::json::parse(kldq::test::read_text(dir / "merged.json")), whole);
  CHECK(kldq::io::read_csv(dir / "m.csv").size() == 36);

  // A shard is not a profile; other runs' and incomplete sets are refused, and nothing written.
  auto edited = [&](const std::string& name, auto&& edit) {
    auto j = nlohmann::json::parse(kldq::test::read_text(dir / "s1.json"));
    edit(j);
    kldq::test::write_text(dir / name, j.dump());
    return path(name);
  };
  const std::string other_calib =
      edited("calib.json", [](auto& j) { j["calibration"]["seed"] = 1; });
  const std::string other_split = edited("split.json", [](auto& j) { j["shard"]["count"] = 3; });
  const std::string other_base = edited("base.json", [](auto& j) { j["baseline_kl"] = 0.5; });
  const std::string other_fp = edited("fp.json", [](auto& j) { j["model_fingerprint"] = "x"; });
  const std::string other_batch = edited("batch.json", [](auto& j) { j["batch"] = 4; });
  const std::string s0 = path("s0.json"), s1 = path("s1.json");
  const std::vector<std::pair<std::string, std::string>> bad = {
      {s0, "shard(s) 1/2 missing"},
      {s0 + " " + s0 + " " + s1, "are both shard 0/2"},
      {s0 + " " + other_split, "shards of different splits"},
      {s0 + " " + other_calib, "disagree on calibration.seed"},
      {s0 + " " + other_base, "disagree on baseline_kl"},
      {s0 + " " + other_fp, "disagree on model_fingerprint"},
      {s0 + " " + other_batch, "disagree on batch: 8 vs 4"},
      {s0 + " " + path("whole.json"), "not a shard (no \"shard\" key; kldq profile --shard i/n"},
      {s0 + " " + s1 + " --base nf4", "give only the shard files"},
  };
  for (const auto& [args, text] : bad) {
    const auto r = run_kldq("profile --merge " + args + " -o " + path("bad.json"));
    INFO(args << "\n" << r.err);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(text));
    CHECK_FALSE(kldq::test::fs::exists(dir / "bad.json"));
  }
  // --gpus names CUDA devices only (the several-device path itself is tested above and on CUDA
  // by scripts/gpu/check.sh).
  const bool cuda = kldq::cuda_device_count() > 0;
  const std::string no_device = "profile " + model->string() + " --base nf4 --calib " +
                                calib->string() + " --samples 8 --seq-len 128 ";
  std::vector<std::pair<std::string, std::string>> bad_gpus = {
      {"--gpus 0 --device cpu", "--gpus 0 and --device cpu: give one of them"},
      {"--gpus 0,,1", cuda ? "--gpus 0,,1: expected all or device indices" : "no CUDA device"},
      {"--gpus 1,", cuda ? "--gpus 1,: expected all or device indices" : "no CUDA device"},
      {"--gpus 0,0", cuda ? "--gpus 0,0: device 0 given twice" : "no CUDA device"},
      {"--gpus 99", cuda ? "--gpus 99: no CUDA device 99" : "no CUDA device"}};
  if (!cuda) bad_gpus.emplace_back("--gpus all", "--gpus all: no CUDA device");
  for (const auto& [args, text] : bad_gpus) {
    const auto r = run_kldq(no_device + args + " -o " + path("bad.json"));
    INFO(args << "\n" << r.err);
    CHECK(r.rc == 2);
    CHECK_THAT(r.err, HasText(text));
    CHECK_FALSE(kldq::test::fs::exists(dir / "bad.json"));
  }
  const auto plan = run_kldq("plan " + s0 + " --uniform");
  CHECK(plan.rc == 2);
  CHECK_THAT(plan.err, HasText("a shard of a profile"));

  // scripts/slurm/profile.sh: an array of 3 shards and a merge job, here through a stand-in for
  // sbatch that runs each job at once; the merged profile is the whole one.
  const auto bin = dir / "bin";
  kldq::test::fs::create_directories(bin);
  kldq::test::fs::copy_file(kldq::test::fs::path(KLDQ_SOURCE_DIR) / "tests/profile/fake_sbatch",
                            bin / "sbatch");
  const auto slurm = kldq::test::run_command(
      "PATH=" + bin.string() + ":$PATH FAKE_SBATCH_LOG=" + path("sbatch.log") +
      " KLDQ_BIN=" + KLDQ_BINARY + " " + KLDQ_SOURCE_DIR + "/scripts/slurm/profile.sh 3 " +
      path("slurm.json") + common.substr(std::string("profile").size()));
  INFO(slurm.err);
  REQUIRE(slurm.rc == 0);
  CHECK_THAT(slurm.out, HasText("3 shards"));
  check_same_profile(nlohmann::json::parse(kldq::test::read_text(dir / "slurm.json")), whole);
  const std::string log = kldq::test::read_text(dir / "sbatch.log");
  CHECK_THAT(log, HasText("--array=0-2"));
  CHECK_THAT(log, HasText("--dependency=afterok:"));
}
