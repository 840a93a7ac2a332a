// Residency and streaming: the planner's decisions against hand-derived budgets, and streamed
// blocks running exactly the resident arithmetic (forward, replaced layers, profiles in both
// modes, GPTQ and AWQ) on the CPU, where a "device slot" is a copy made on demand. The [cuda]
// case repeats the comparison with pinned host memory and the copy stream.
#include <ATen/ATen.h>

#include "kldq/core/error.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/model/residency.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/quant/quantizer.hpp"
#include "support/catch.hpp"

namespace model = kldq::model;
namespace profile = kldq::profile;

namespace {

constexpr uint64_t MiB = 1ULL << 20;

model::MemoryNeeds needs() {
  model::MemoryNeeds n;
  n.fixed = 100 * MiB;
  n.blocks.assign(8, 10 * MiB);
  n.working = 50 * MiB;
  n.caches = 60 * MiB;
  return n;
}

model::Decoder load(c10::Device device, c10::ScalarType dtype, std::vector<bool> streamed = {}) {
  return model::Decoder::load(kldq::test::tiny_model(), device, dtype, streamed);
}

void same_units(const profile::Result& a, const profile::Result& b) {
  CHECK(a.baseline.mean == b.baseline.mean);
  REQUIRE(a.units.size() == b.units.size());
  for (size_t i = 0; i < a.units.size(); ++i) {
    INFO(a.units[i].unit.id);
    CHECK(a.units[i].kl.mean == b.units[i].kl.mean);  // bit for bit
    CHECK(a.units[i].kl.top1 == b.units[i].kl.top1);
  }
}

profile::Result profile_of(c10::Device device, c10::ScalarType dtype, std::vector<bool> streamed,
                           profile::Mode mode, bool cached, bool on_host) {
  auto m = load(device, dtype, streamed);
  at::manual_seed(3);
  const at::Tensor ids = at::randint(m.config().vocab_size, {6, 24}, at::kLong);
  profile::Options o;
  o.mode = mode;
  o.base = kldq::formats::FormatSpec::parse("int3_g32");
  o.batch = 4;
  o.chunk = 50;
  o.cached = cached;
  o.caches_on_host = on_host;
  o.group = 5;  // units of both blocks in one group, and groups that start mid-model
  return profile::run_profile(m, ids, kldq::test::rtn_layers(m, o.base), o);
}

// GPTQ and AWQ (int4_g32 everywhere) of a resident and a fully streamed tiny model give the same
// codes, scales and input scales.
void same_quantization(c10::Device device, c10::ScalarType dtype) {
  at::manual_seed(4);
  const at::Tensor calib = at::randint(512, {4, 32}, at::kLong);
  kldq::model::LayerFormats formats;
  for (int b = 0; b < 2; ++b)
    for (model::Proj p : model::kAllProjs)
      formats[model::LayerId{b, p}.name()] = kldq::formats::FormatSpec::parse("int4_g32");
  for (const std::string method : {"gptq", "awq"}) {  // awq scores single layers of a slot too
    INFO(method);
    kldq::quant::MethodOptions o;
    o.method = kldq::quant::parse_method(method, "test");
    o.batch = 2;
    auto r = load(device, dtype);
    auto s = load(device, dtype, {true, true});
    const auto want = kldq::quant::quantize_layers(r, formats, o, calib);
    const auto got = kldq::quant::quantize_layers(s, formats, o, calib);
    REQUIRE(got.size() == want.size());
    for (const auto& [id, q] : want) {
      INFO(id.name());
      const auto& g = got.at(id);
      CHECK(at::equal(g.packed.codes.cpu(), q.packed.codes.cpu()));
      CHECK(at::equal(g.packed.scales.cpu(), q.packed.scales.cpu()));
      CHECK(g.input_scale.defined() == q.input_scale.defined());
      if (q.input_scale.defined()) CHECK(at::equal(g.input_scale.cpu(), q.input_scale.cpu()));
    }
  }
}

}  // namespace

TEST_CASE("residency plan: caches leave first, then the earliest blocks stream", "[model]") {
  // fixed 100 + working 50 + 8 blocks of 10 + caches 60 (MiB). With k blocks streamed the
  // device holds 150 + (8 - k) x 10 resident + 2 x 10 slots = 250 - 10k (k >= 1).
  const auto n = needs();
  auto p = model::plan_memory(n, 300 * MiB, -1, "--batch");
  CHECK_FALSE(p.any_streamed());
  CHECK_FALSE(p.caches_on_host);
  CHECK(p.device_bytes == 290 * MiB);
  p = model::plan_memory(n, 280 * MiB, -1, "--batch");  // 230 without the caches
  CHECK_FALSE(p.any_streamed());
  CHECK(p.caches_on_host);
  CHECK(p.device_bytes == 230 * MiB);
  p = model::plan_memory(n, 225 * MiB, -1, "--batch");  // 240, 230, then 220 with k = 3
  CHECK(p.streamed == std::vector<bool>{true, true, true, false, false, false, false, false});
  CHECK(p.caches_on_host);
  CHECK(p.device_bytes == 220 * MiB);
  CHECK(p.describe(n) ==
        "resident: embed, head, blocks 3-7 (50.0 MiB); streamed: blocks 0-2 (30.0 MiB, host); "
        "caches: host (60.0 MiB); planned 220.0 MiB of 225.0 MiB");
  // --resident-blocks 2 with room to spare: six blocks stream, the caches stay on the device.
  p = model::plan_memory(n, 1000 * MiB, 2, "--batch");
  CHECK(std::count(p.streamed.begin(), p.streamed.end(), true) == 6);
  CHECK_FALSE(p.caches_on_host);
  CHECK(p.device_bytes == (150 + 20 + 20 + 60) * MiB);
  // The least any split needs is every block streamed: 150 + 2 x 10 = 170.
  CHECK(model::plan_memory(n, 170 * MiB, -1, "--batch").device_bytes == 170 * MiB);
  CHECK_THROWS_WITH(model::plan_memory(n, 169 * MiB, -1, "--batch or --seq-len"),
                    "out of GPU memory before loading: the smallest working set needs 170.0 MiB "
                    "(embed and head 100.0 MiB, working set 50.0 MiB, largest block 10.0 MiB), "
                    "the budget is 169.0 MiB; lower --batch or --seq-len, or give a larger "
                    "--max-gpu-memory");
}

TEST_CASE("streamed blocks run the resident arithmetic", "[model]") {
  at::InferenceMode guard;
  at::manual_seed(1);
  const at::Tensor ids = at::randint(512, {3, 40}, at::kLong);
  auto resident = load(c10::kCPU, at::kFloat);
  const at::Tensor want = resident.forward(ids);
  for (const std::vector<bool>& s : {std::vector<bool>{true, false}, {false, true}, {true, true}}) {
    auto m = load(c10::kCPU, at::kFloat, s);
    CHECK(at::equal(m.forward(ids), want));
    CHECK(at::equal(m.forward(ids), want));
    uint64_t streamed = 0;
    for (int b = 0; b < m.num_blocks(); ++b) streamed += s[size_t(b)] ? m.block_bytes(b) : 0;
    // Two slots hold both blocks of this model: each is copied once, whatever the forwards.
    CHECK(m.streamed_bytes() == streamed);
    CHECK(m.weight_bytes() == resident.weight_bytes());
  }
  // A replaced layer of a streamed block is seen by the next forward (its slot is stale).
  auto m = load(c10::kCPU, at::kFloat, {true, true});
  auto r = load(c10::kCPU, at::kFloat);
  const model::LayerId id{0, model::Proj::K};
  const auto spec = kldq::formats::FormatSpec::parse("int4_g32");
  const auto packed = kldq::formats::quantize_rtn(r.linear(id).weight(), spec);
  CHECK(at::equal(m.forward(ids), want));  // both blocks now in the slots
  r.quantize_layer(id, packed);
  m.quantize_layer(id, packed);
  CHECK(m.linear(id).packed().codes.device().is_cpu());
  const at::Tensor changed = r.forward(ids);
  CHECK_FALSE(at::equal(changed, want));
  CHECK(at::equal(m.forward(ids), changed));
  // A shared decoder keeps the original layers when the other is changed.
  auto base = load(c10::kCPU, at::kFloat, {true, false});
  auto shared = base.share();
  shared.quantize_layer(id, packed);
  CHECK(at::equal(base.forward(ids), want));
  CHECK(at::equal(shared.forward(ids), changed));
  // Packed groups fused by apply_layers: a streamed block's copy rebuilds the members as row
  // views of its fused copy, the same layers as the resident model's, and copies each block's
  // bytes once (the members view the fused buffer and share its input scale: no byte counted
  // twice). Each group's layers get one input scale, as AWQ gives them.
  auto with_scales = [](kldq::quant::QuantizedLayers layers) {
    for (auto& [l, q] : layers) {
      const bool attn =
          l.proj == model::Proj::Q || l.proj == model::Proj::K || l.proj == model::Proj::V;
      const bool mlp = l.proj == model::Proj::GATE || l.proj == model::Proj::UP;
      if (attn || mlp) q.input_scale = at::full({q.packed.in}, attn ? 2.0 : 0.5);
    }
    return layers;
  };
  auto rq = load(c10::kCPU, at::kFloat), sq = load(c10::kCPU, at::kFloat, {true, true});
  kldq::quant::apply_layers(rq, with_scales(kldq::test::rtn_layers(rq, spec)));
  kldq::quant::apply_layers(sq, with_scales(kldq::test::rtn_layers(sq, spec)));
  CHECK(at::equal(sq.forward(ids), rq.forward(ids)));
  CHECK(sq.streamed_bytes() == sq.block_bytes(0) + sq.block_bytes(1));
  CHECK(sq.weight_bytes() == rq.weight_bytes());
  for (const model::LayerId l : sq.linear_ids())
    CHECK(at::equal(sq.live_linear(l).effective_weight(at::kFloat),
                    rq.linear(l).effective_weight(at::kFloat)));
}

TEST_CASE("streamed profiles equal resident ones bit for bit", "[model][profile]") {
  using M = profile::Mode;
  for (const M mode : {M::QUANTIZE_ONE, M::RESTORE_ONE})
    for (const bool cached : {true, false}) {
      INFO(profile::mode_name(mode) << (cached ? " cached" : " naive"));
      const auto want = profile_of(c10::kCPU, at::kFloat, {}, mode, cached, false);
      same_units(want, profile_of(c10::kCPU, at::kFloat, {true, true}, mode, cached, true));
      same_units(want, profile_of(c10::kCPU, at::kFloat, {true, false}, mode, cached, false));
    }
}

TEST_CASE("gptq and awq of a streamed model equal the resident ones", "[model][quant]") {
  same_quantization(c10::kCPU, at::kFloat);
}

TEST_CASE("streaming on CUDA: pinned host blocks and the copy stream change no bit",
          "[cuda][model]") {
  KLDQ_SKIP_NO_CUDA();
  const c10::Device gpu(c10::kCUDA);
  {
    at::InferenceMode guard;
    at::manual_seed(1);
    const at::Tensor ids = at::randint(512, {3, 40}, at::kLong);
    const at::Tensor want = load(gpu, at::kBFloat16).forward(ids);
    auto m = load(gpu, at::kBFloat16, {true, true});
    CHECK(m.storage_device(0).is_cpu());
    CHECK(m.linear({0, model::Proj::Q}).weight().is_pinned());
    for (int k = 0; k < 3; ++k) CHECK(at::equal(m.forward(ids), want));
  }
  using M = profile::Mode;
  for (const M mode : {M::QUANTIZE_ONE, M::RESTORE_ONE}) {
    INFO(profile::mode_name(mode));
    same_units(profile_of(gpu, at::kBFloat16, {}, mode, true, false),
               profile_of(gpu, at::kBFloat16, {true, true}, mode, true, true));
  }
  same_quantization(gpu, at::kBFloat16);
}

TEST_CASE("profile --resident-blocks: the residency line, its record, and the same profile",
          "[model][cli]") {
  // The embedded WikiText model (4 blocks, its own tokenizer) and the demo's calibration text.
  const std::string model = KLDQ_SOURCE_DIR "/models/wikitext-qwen2-4m";
  const std::string calib = KLDQ_SOURCE_DIR "/data/demo/wiki.test.tail.txt";
  kldq::test::TempDir dir("residency");
  const std::string base = "-v profile " + model + " --base int4_g32 --calib " + calib +
                           " --samples 4 --seq-len 32 --batch 2 --device cpu";
  const auto a = kldq::test::run_kldq(base + " -o " + (dir / "a.json").string());
  const auto b =
      kldq::test::run_kldq(base + " --resident-blocks 1 -o " + (dir / "b.json").string());
  INFO(a.err << b.err);
  REQUIRE(a.rc == 0);
  REQUIRE(b.rc == 0);
  CHECK_THAT(b.err, HasText("kldq info: resident: embed, head, block 3 ("));
  CHECK_THAT(b.err, HasText("; streamed: blocks 0-2 ("));
  CHECK_THAT(b.err, HasText("copied host-to-device for streamed blocks"));
  CHECK(a.err.find("streamed: ") == std::string::npos);
  const auto ja = nlohmann::json::parse(kldq::test::read_text(dir / "a.json"));
  const auto jb = nlohmann::json::parse(kldq::test::read_text(dir / "b.json"));
  CHECK(ja["units"] == jb["units"]);  // every number, bit for bit
  CHECK(ja["baseline_kl"] == jb["baseline_kl"]);
  CHECK(ja["streamed_bytes"] == 0);
  CHECK(jb["streamed_bytes"].get<uint64_t>() > 0);
  CHECK(jb["residency"].get<std::string>().starts_with("resident: embed, head, block 3 ("));
  CHECK(jb["peak_host_bytes"].get<uint64_t>() > 0);
}
