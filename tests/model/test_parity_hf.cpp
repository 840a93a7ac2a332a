// Logits parity with Hugging Face transformers (the oracle, run from the venv): random tiny
// Qwen2 and Llama models made by transformers' save_pretrained (the Llama one sharded), the
// real trained stories260K checkpoints, and kldq's own synthesized tiny model, in fp32 on the
// CPU: max |logit difference| <= 1e-4 on several batches, rows with different contents.
#include <ATen/ATen.h>

#include <map>

#include "kldq/io/safetensors.hpp"
#include "kldq/model/decoder.hpp"
#include "support/catch.hpp"

namespace {

using kldq::test::fs::path;

// Runs the oracle once for all cases; returns case name -> (model dir, reference file).
const std::map<std::string, std::pair<path, path>>& oracle_cases() {
  static kldq::test::TempDir work("oracle");
  static const auto cases = [] {
    std::map<std::string, std::pair<path, path>> out;
    const auto py = kldq::test::python_with("transformers safetensors torch");
    if (!py) return out;
    std::string args = " qwen2-random llama-random tiny=" + kldq::test::tiny_model().string();
    if (auto d = kldq::test::shared_data("models/stories260k-qwen2"))
      args += " stories-qwen2=" + d->string();
    if (auto d = kldq::test::shared_data("models/stories260k-llama"))
      args += " stories-llama=" + d->string();
    const auto r = kldq::test::run_command(*py + " " +
                                           KLDQ_SOURCE_DIR "/tests/oracle/hf_oracle.py --workdir " +
                                           work.path().string() + args);
    INFO(r.err);
    REQUIRE(r.rc == 0);
    INFO(r.out);
    const auto done = nlohmann::json::parse(r.out);
    for (auto it = done.begin(); it != done.end(); ++it)
      out[it.key()] = {it.value().get<std::string>(), work / it.key() / "ref.safetensors"};
    return out;
  }();
  return cases;
}

void check_case(const std::string& name) {
  const auto& cases = oracle_cases();
  if (cases.empty()) KLDQ_SKIP("no Python with transformers/safetensors (run scripts/setup.sh)");
  if (!cases.count(name)) KLDQ_SKIP("case " + name + " not available (../shared/data absent)");
  const auto& [model_dir, ref_path] = cases.at(name);
  const auto dec = kldq::model::Decoder::load(model_dir, c10::kCPU, c10::kFloat);
  const auto ref = kldq::io::SafetensorsFile::open(ref_path);
  at::InferenceMode guard;
  REQUIRE(ref->find("ids_0") != nullptr);
  for (int k = 0; ref->find("ids_" + std::to_string(k)); ++k) {
    const at::Tensor ids = ref->tensor("ids_" + std::to_string(k));
    const at::Tensor want = ref->tensor("logits_" + std::to_string(k));
    const at::Tensor got = dec.forward(ids);
    REQUIRE(got.sizes() == want.sizes());
    const double diff = (got - want).abs().max().item<double>();
    INFO(name << " batch " << k << " " << ids.sizes() << ": max |diff| = " << diff);
    CHECK(diff <= 1e-4);
    // The logits must carry signal: a model returning constants would pass a loose comparison.
    CHECK(want.std().item<double>() > 1e-2);
  }
}

}  // namespace

TEST_CASE("logits match transformers: random Qwen2 (tied, GQA, q/k/v bias)", "[model][parity]") {
  check_case("qwen2-random");
}

TEST_CASE("logits match transformers: random Llama (sharded, head_dim, all biases)",
          "[model][parity]") {
  check_case("llama-random");
}

TEST_CASE("logits match transformers: kldq synth tiny checkpoint", "[model][parity]") {
  check_case("tiny");
}

TEST_CASE("logits match transformers: stories260K as qwen2", "[model][parity]") {
  check_case("stories-qwen2");
}

TEST_CASE("logits match transformers: stories260K as llama", "[model][parity]") {
  check_case("stories-llama");
}
