// kldq export and reading other tools' checkpoints. Oracles (tests/oracle/export_oracle.py):
// transformers with the compressed-tensors package loads the compressed-tensors export and its
// logits equal kldq's of the same plan; compressed-tensors' own compressor writes a checkpoint kldq
// reads back bit for bit; the gguf package dequantizes every GGUF tensor to kldq's weights.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <map>

#include "kldq/export/export.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/model/foreign.hpp"
#include "kldq/model/quantized.hpp"
#include "support/catch.hpp"

namespace {

namespace fs = kldq::test::fs;
using kldq::test::run_kldq;

const fs::path kWiki = KLDQ_SOURCE_DIR "/models/wikitext-qwen2-4m";

fs::path stories_llama() {
  const auto d = kldq::test::shared_data("models/stories260k-llama");
  REQUIRE(d);  // ../shared/data: present in CI
  return *d;
}

// A mixed plan of every exactly exportable kind, fused groups kept whole: int4 g32 symmetric
// (q/k/v), int8 (o), int4 g32 asymmetric (gate/up), fp8 per channel (down), int3 g32 and bf16
// restored blocks. `down` is fp8 because stories260K's 172 columns are not whole groups.
std::string mixed_plan() {
  return R"({"method": "rtn", "base": "int4_g32", "overrides": [
    {"layers": "*.o_proj", "format": "int8"},
    {"layers": "re:.*(gate|up)_proj", "format": "int4_g32_asym"},
    {"layers": "*.down_proj", "format": "fp8_e4m3"},
    {"layers": "re:model\\.layers\\.1\\.self_attn\\.[qkv]_proj", "format": "int3_g32"},
    {"layers": "model.layers.2.self_attn.*", "format": "bf16"},
    {"layers": "model.layers.3.mlp.*", "format": "bf16"}]})";
}

// Every tensor of two checkpoints as kldq reads them (formats and packed parts) is identical.
void check_same_weights(const fs::path& a, const fs::path& b) {
  const kldq::exporting::Source x(a), y(b);
  auto quantized = [](const kldq::model::LayerFormats& f) {
    std::map<std::string, std::string> out;  // restored (bf16) layers are plain in an export
    for (const auto& [layer, spec] : f)
      if (!spec.dense()) out[layer] = spec.name();
    return out;
  };
  CHECK(quantized(x.formats()) == quantized(y.formats()));
  for (const auto& s : x.slots()) {
    INFO(s.name);
    const at::Tensor u = x.tensor(s.name), v = y.tensor(s.name);
    REQUIRE(u.scalar_type() == v.scalar_type());
    CHECK(at::equal(u, v));
  }
}

// `kldq quantize MODEL --plan PLAN -o OUT`, required to succeed.
void quantize(const fs::path& model, const fs::path& plan, const fs::path& out) {
  const auto r =
      run_kldq("quantize " + model.string() + " --plan " + plan.string() + " -o " + out.string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
}

at::Tensor read_tensor(const fs::path& file, const std::string& name) {
  return kldq::io::SafetensorsFile::open(file)->tensor(name).clone();
}

}  // namespace

TEST_CASE("compressed-tensors export: transformers' logits equal kldq's, read back bit for bit",
          "[export]") {
  const auto py = kldq::test::python_with("transformers compressed_tensors torch");
  REQUIRE(py);  // scripts/setup.sh installs the venv; CI has it
  for (const fs::path& model : {kWiki, stories_llama()}) {
    INFO(model.string());
    kldq::test::TempDir tmp("export-ct");
    kldq::test::write_text(tmp / "plan.json", mixed_plan());
    quantize(model, tmp / "plan.json", tmp / "q");
    const auto r = run_kldq("export " + model.string() + " --plan " + (tmp / "plan.json").string() +
                            " --to compressed-tensors -o " + (tmp / "ct").string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("exact") != std::string::npos);
    // (2) kldq reads its export back: the same formats, codes, scales and dense tensors.
    check_same_weights(tmp / "q", tmp / "ct");
    const nlohmann::json config =
        nlohmann::json::parse(kldq::test::read_text(tmp / "ct" / "config.json"));
    const auto& qc = config["quantization_config"];
    CHECK(qc["format"] == "mixed-precision");
    CHECK(qc["ignore"].dump().find("model.layers.2.self_attn.q_proj") != std::string::npos);
    CHECK(qc.dump().find("qkv_proj") != std::string::npos);

    // (1) transformers + compressed-tensors (fp32, CPU) against kldq's forward of the plan.
    kldq::test::write_text(tmp / "ids.json",
                           "[[1, 5, 9, 13, 2, 7, 30, 61, 99, 3, 17, 40, 8],"
                           " [4, 4, 200, 31, 77, 12, 6, 250, 1, 90, 33, 2, 5]]");
    const auto o = kldq::test::run_command(
        *py + " " KLDQ_SOURCE_DIR "/tests/oracle/export_oracle.py ct-logits " +
        (tmp / "ct").string() + " " + (tmp / "ids.json").string() + " " +
        (tmp / "hf.safetensors").string());
    INFO(o.err);
    REQUIRE(o.rc == 0);
    const at::Tensor want = read_tensor(tmp / "hf.safetensors", "logits");
    const auto m = kldq::model::Decoder::load(tmp / "q", c10::kCPU, c10::kFloat);
    const at::Tensor ids = at::tensor({1, 5, 9,   13, 2,  7,  30, 61,  99, 3,  17, 40, 8,
                                       4, 4, 200, 31, 77, 12, 6,  250, 1,  90, 33, 2,  5},
                                      at::kLong)
                               .reshape({2, 13});
    const at::Tensor got = m.forward(ids);
    const double diff = (got - want).abs().max().item<double>();
    INFO("max |logit diff| " << diff);
    CHECK(diff <= 1e-4);
  }
}

namespace {

const char* kIds =
    "[[1, 5, 9, 13, 2, 7, 30, 61, 99, 3, 17, 40, 8, 100, 200, 300],"
    " [4, 4, 200, 31, 77, 12, 6, 250, 1, 90, 33, 2, 5, 11, 12, 13]]";

// Mean KL(p || q) per token of two [B, T, V] logits, in fp64.
double mean_kl(const at::Tensor& p_logits, const at::Tensor& q_logits) {
  const at::Tensor p = at::log_softmax(p_logits.to(at::kDouble), -1);
  const at::Tensor q = at::log_softmax(q_logits.to(at::kDouble), -1);
  return (p.exp() * (p - q)).sum(-1).mean().item<double>();
}

// kldq's fp32 CPU logits of kIds on the checkpoint `dir`.
at::Tensor kldq_logits(const fs::path& dir) {
  const auto ids = nlohmann::json::parse(kIds).get<std::vector<std::vector<int64_t>>>();
  std::vector<int64_t> flat;
  for (const auto& row : ids) flat.insert(flat.end(), row.begin(), row.end());
  const auto m = kldq::model::Decoder::load(dir, c10::kCPU, c10::kFloat);
  return m.forward(at::tensor(flat, at::kLong).reshape({static_cast<int64_t>(ids.size()), -1}));
}

// The export oracle's `args`, required to succeed.
void oracle(const std::string& py, const std::string& args) {
  const auto o =
      kldq::test::run_command(py + " " KLDQ_SOURCE_DIR "/tests/oracle/export_oracle.py " + args);
  INFO(o.err);
  REQUIRE(o.rc == 0);
}

}  // namespace

// AWQ's layers divide their input by a scale (kldq keeps it per layer); the exports fold it into
// the norms, v's and up's rows and the dense members (src/export/fold.cpp). Oracle: transformers'
// fp32 logits of each export against kldq's of the AWQ checkpoint itself. The fold rounds only
// the folded rows' fp16 scales (<= 2^-11 relative) and the bf16 dense weights; a missing or wrong
// fold changes the function by orders of magnitude more than the KL bound of 1e-6.
TEST_CASE("AWQ plans export with their input scales folded, computing the AWQ model", "[export]") {
  const auto py = kldq::test::python_with("transformers compressed_tensors gguf torch");
  REQUIRE(py);
  kldq::test::TempDir tmp("export-awq");
  kldq::test::write_text(tmp / "ids.json", kIds);
  // Without grouped-query attention o's scale is searched too, and folds into v's rows.
  oracle(*py, "ungqa " + kWiki.string() + " " + (tmp / "m").string());
  auto awq = [&](const fs::path& model, const std::string& plan, const fs::path& out) {
    kldq::test::write_text(tmp / "plan.json", plan);
    const auto r =
        run_kldq("quantize " + model.string() + " --plan " + (tmp / "plan.json").string() +
                 " --calib " KLDQ_SOURCE_DIR
                 "/data/demo/wiki.test.tail.txt --samples 8"
                 " --seq-len 128 -o " +
                 out.string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
  };
  awq(tmp / "m", R"({"method": "awq", "base": "int4_g32", "overrides": [
      {"layers": "*.o_proj", "format": "int8"},
      {"layers": "re:model\\.layers\\.1\\.mlp\\.(gate|up)_proj", "format": "int4_g32_asym"},
      {"layers": "model.layers.2.self_attn.*", "format": "bf16"},
      {"layers": "re:model\\.layers\\.3\\.mlp\\.(gate|up)_proj", "format": "bf16"}]})",
      tmp / "q");
  auto r = run_kldq("-v export " + (tmp / "q").string() + " --to compressed-tensors -o " +
                    (tmp / "ct").string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  CHECK(r.err.find("self_attn.o_proj: input scale folded into model.layers.0.self_attn.v_proj") !=
        std::string::npos);
  CHECK(r.err.find("mlp.down_proj: input scale folded into model.layers.3.mlp.up_proj") !=
        std::string::npos);
  oracle(*py, "ct-logits " + (tmp / "ct").string() + " " + (tmp / "ids.json").string() + " " +
                  (tmp / "hf.safetensors").string());
  const at::Tensor want = kldq_logits(tmp / "q");
  const at::Tensor hf = read_tensor(tmp / "hf.safetensors", "logits");
  CHECK(mean_kl(want, hf) < 1e-6);
  // kldq reads the export as transformers does: no input scale is left.
  CHECK((kldq_logits(tmp / "ct") - hf).abs().max().item<double>() <= 1e-4);
  const auto ct = kldq::io::Checkpoint::open(tmp / "ct");
  for (const auto& name : ct.names()) CHECK(name.find("input_scale") == std::string::npos);
  // The norm took q/k/v's scale: gamma' s = gamma (fp32 arithmetic, kept in fp32).
  const auto q = kldq::io::Checkpoint::open(tmp / "q");
  const at::Tensor s = q.tensor("model.layers.0.self_attn.q_proj.input_scale").to(at::kFloat);
  const at::Tensor g = q.tensor("model.layers.0.input_layernorm.weight").to(at::kFloat);
  const at::Tensor g2 = ct.tensor("model.layers.0.input_layernorm.weight");
  CHECK(g2.scalar_type() == at::kFloat);
  CHECK(((g2 * s - g).abs() <= g.abs() * 1e-6).all().item<bool>());

  // GGUF, on the model with GQA, splitting gate/up (the dense up's columns take gate's scale) and
  // with exact types only (Q4_0, Q8_0, BF16): transformers dequantizes it with the gguf package.
  awq(kWiki, R"({"method": "awq", "base": "int4_g32", "overrides": [
      {"layers": "*.o_proj", "format": "int8"},
      {"layers": "model.layers.1.mlp.down_proj", "format": "bf16"},
      {"layers": "model.layers.3.mlp.up_proj", "format": "bf16"}]})",
      tmp / "qg");
  fs::create_directories(tmp / "g");
  r = run_kldq("export " + (tmp / "qg").string() + " --to gguf -o " +
               (tmp / "g" / "m.gguf").string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kWiki / f, tmp / "g" / f);
  oracle(*py, "gguf-logits " + (tmp / "g").string() + " m.gguf " + (tmp / "ids.json").string() +
                  " " + (tmp / "hg.safetensors").string());
  CHECK(mean_kl(kldq_logits(tmp / "qg"), read_tensor(tmp / "hg.safetensors", "logits")) < 1e-6);
}

TEST_CASE("compressed-tensors' own compressor writes checkpoints kldq reads bit for bit",
          "[export]") {
  const auto py = kldq::test::python_with("transformers compressed_tensors torch");
  REQUIRE(py);
  kldq::test::TempDir tmp("export-ct3");
  // Formats the oracle writes with compressed-tensors' group strategy, symmetric and asymmetric.
  kldq::test::write_text(tmp / "plan.json", R"({"method": "rtn", "base": "int4_g32", "overrides": [
    {"layers": "re:.*(gate|up)_proj", "format": "int4_g64_asym"},
    {"layers": "*.down_proj", "format": "int3_g32"},
    {"layers": "model.layers.2.self_attn.*", "format": "bf16"}]})");
  quantize(kWiki, tmp / "plan.json", tmp / "q");
  const auto o = kldq::test::run_command(
      *py + " " KLDQ_SOURCE_DIR "/tests/oracle/export_oracle.py ct-compress " +
      (tmp / "q").string() + " " + (tmp / "theirs").string());
  INFO(o.err);
  REQUIRE(o.rc == 0);
  // Their checkpoint: F32 scales (the model's dtype) and their packing; kldq's reading equals q.
  const kldq::exporting::Source theirs(tmp / "theirs");
  CHECK(kldq::io::SafetensorsFile::open(tmp / "theirs" / "model.safetensors")
            ->find("model.layers.0.self_attn.q_proj.weight_scale")
            ->scalar_type == at::kFloat);  // read as kldq's fp16, exactly
  const kldq::exporting::Source ours(tmp / "q");
  size_t quantized = 0;
  for (const auto& [layer, spec] : ours.formats()) {
    INFO(layer);
    if (spec.dense()) {  // restored layers are plain (ignored) in their checkpoint
      CHECK(!theirs.formats().count(layer));
      continue;
    }
    ++quantized;
    REQUIRE(theirs.formats().count(layer));
    CHECK(theirs.formats().at(layer).name() == spec.name());
    const auto a = ours.packed(layer).parts(), b = theirs.packed(layer).parts();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) CHECK(at::equal(a[i], b[i]));
  }
  CHECK(theirs.formats().size() == quantized);
  // And kldq evaluates it: its logits equal those of kldq's own checkpoint.
  const at::Tensor ids = at::randint(0, 4096, {2, 17}, at::kLong);
  const auto m1 = kldq::model::Decoder::load(tmp / "q", c10::kCPU, c10::kFloat);
  const auto m2 = kldq::model::Decoder::load(tmp / "theirs", c10::kCPU, c10::kFloat);
  CHECK(at::equal(m1.forward(ids), m2.forward(ids)));
}

namespace {

// GGUF tensor names of HF ones (llama.cpp's convert_hf_to_gguf tensor map), written out here
// as the oracle's side of the mapping.
std::string gguf_name(const std::string& hf) {
  static const std::vector<std::pair<std::string, std::string>> kMap = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.", "attn_q."},
      {"self_attn.k_proj.", "attn_k."},
      {"self_attn.v_proj.", "attn_v."},
      {"self_attn.o_proj.", "attn_output."},
      {"mlp.gate_proj.", "ffn_gate."},
      {"mlp.up_proj.", "ffn_up."},
      {"mlp.down_proj.", "ffn_down."}};
  for (const auto& [from, to] : kMap)
    if (hf == from) return to;
  const std::string rest = hf.substr(hf.find('.', 13) + 1);
  for (const auto& [from, to] : kMap)
    if (rest.starts_with(from))
      return "blk." + hf.substr(13, hf.find('.', 13) - 13) + "." + to + rest.substr(from.size());
  FAIL("unmapped " << hf);
  return "";
}

// Writes the weights kldq evaluates for checkpoint `dir` (fp32, GGUF names) and returns the gguf
// package's reading of `gguf` against them.
nlohmann::json check_gguf(const std::string& py, const fs::path& dir, const fs::path& gguf,
                          const fs::path& ref) {
  const kldq::exporting::Source src(dir);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& s : src.slots()) {
    if (s.role == kldq::model::TensorRole::LINEAR_PART) continue;
    tensors.push_back({gguf_name(s.name), src.tensor(s.name).to(at::kFloat).contiguous()});
  }
  for (const auto& [layer, spec] : src.formats())
    if (!spec.dense())
      tensors.push_back(
          {gguf_name(layer + ".weight"), kldq::formats::dequantize(src.packed(layer))});
  kldq::io::write_safetensors(ref, tensors);
  const auto o = kldq::test::run_command(
      py + " " KLDQ_SOURCE_DIR "/tests/oracle/export_oracle.py gguf-check " + gguf.string() + " " +
      ref.string());
  INFO(o.err);
  REQUIRE(o.rc == 0);
  return nlohmann::json::parse(o.out);
}

}  // namespace

TEST_CASE("GGUF export: the gguf package dequantizes every tensor to kldq's weights", "[export]") {
  const auto py = kldq::test::python_with("gguf numpy torch");
  REQUIRE(py);
  for (const fs::path& model : {kWiki, stories_llama()}) {
    INFO(model.string());
    kldq::test::TempDir tmp("export-gguf");
    kldq::test::write_text(tmp / "plan.json", mixed_plan());
    quantize(model, tmp / "plan.json", tmp / "q");
    const auto r =
        run_kldq("export " + (tmp / "q").string() + " --to gguf -o " + (tmp / "m.gguf").string());
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const nlohmann::json j = check_gguf(*py, tmp / "q", tmp / "m.gguf", tmp / "ref.safetensors");
    const auto config = kldq::model::load_config(model / "config.json");
    const std::string arch = config.arch == kldq::model::Arch::QWEN2 ? "qwen2" : "llama";
    const auto& meta = j["meta"];
    CHECK(meta["general.architecture"] == arch);
    CHECK(meta[arch + ".block_count"] == config.num_layers);
    CHECK(meta[arch + ".attention.head_count_kv"] == config.num_kv_heads);
    CHECK(meta["tokenizer.ggml.tokens"] == "list[" + std::to_string(config.vocab_size) + "]");
    CHECK(meta["tokenizer.ggml.model"] ==
          (fs::exists(model / "tokenizer.model") ? "llama" : "gpt2"));
    // Layers the export reported as re-quantized, by GGUF tensor name.
    std::map<std::string, std::string> requantized;
    const kldq::exporting::Source q(tmp / "q");
    for (const auto& [layer, spec] : q.formats())
      if (r.err.find(layer + ": re-quantized") != std::string::npos)
        requantized[gguf_name(layer + ".weight")] = spec.name();
    int exact = 0;
    for (const auto& [name, t] : j["tensors"].items()) {
      INFO(name << " " << t.dump());
      REQUIRE(!t["max_diff"].is_null());
      const std::string type = t["type"];
      const double diff = t["max_diff"].get<double>();
      const double absmax = read_tensor(tmp / "ref.safetensors", name).abs().max().item<double>();
      if (!requantized.count(name)) {
        CHECK(diff == 0.0);
        ++exact;
      } else if (type == "Q4_1") {  // codes kept; the minimum -zero*scale rounded to fp16
        CHECK(diff <= 1e-3 * absmax);
      } else if (type == "Q8_0") {  // fp8 re-quantized: half a step of absmax / 127
        CHECK(diff <= 0.0045 * absmax);
      } else {  // int3 re-quantized to Q4_0 as llama.cpp does: d = -(signed extreme) / 8, codes
        // -8..7, so the extreme's opposite sign clamps at 7d: error up to absmax / 8 (+ fp16 d)
        CHECK(type == "Q4_0");
        CHECK(requantized[name] == "int3_g32");
        CHECK(diff <= 0.13 * absmax);
      }
    }
    CHECK(exact > 0);
    if (config.intermediate_size % 32 == 0)  // else down_proj is F32 (rows not whole blocks)
      CHECK(r.err.find("fp8_e4m3 -> Q8_0") != std::string::npos);
  }
}

TEST_CASE("GGUF export of an nf4 plan: IQ4_NL re-quantized from the original weights", "[export]") {
  const auto py = kldq::test::python_with("gguf numpy torch");
  REQUIRE(py);
  kldq::test::TempDir tmp("export-iq4");
  const auto r = run_kldq("export " + kWiki.string() + " --base nf4 --to gguf -o " +
                          (tmp / "m.gguf").string());
  INFO(r.err);
  REQUIRE(r.rc == 0);
  CHECK(r.err.find("nf4 -> IQ4_NL from the original weights") != std::string::npos);
  // Against the original weights: IQ4_NL's widest step is 24/127 of a block's absmax.
  const nlohmann::json j = check_gguf(*py, kWiki, tmp / "m.gguf", tmp / "ref.safetensors");
  for (const auto& [name, t] : j["tensors"].items()) {
    INFO(name << " " << t.dump());
    const double absmax = read_tensor(tmp / "ref.safetensors", name).abs().max().item<double>();
    if (t["type"] == "IQ4_NL")
      CHECK(t["max_diff"].get<double>() <= 0.1 * absmax);
    else
      CHECK(t["max_diff"].get<double>() == 0.0);
  }
}

TEST_CASE("export refuses what the target cannot hold, and writes nothing", "[export][cli]") {
  kldq::test::TempDir tmp("export-bad");
  const std::string model = kWiki.string();
  // A format without a compressed-tensors equivalent: the layers and the nearest format.
  auto r = run_kldq("export " + model + " --base nf4 --to compressed-tensors -o " +
                    (tmp / "a").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("model.layers.0.self_attn.q_proj (nf4)") != std::string::npos);
  CHECK(r.err.find("nearest: int4_g64") != std::string::npos);
  CHECK(!fs::exists(tmp / "a"));
  // A fused group split between schemes.
  kldq::test::write_text(tmp / "split.json", R"({"method": "rtn", "base": "int4_g32",
    "overrides": [{"layers": "model.layers.1.self_attn.k_proj", "format": "int8"}]})");
  r = run_kldq("export " + model + " --plan " + (tmp / "split.json").string() +
               " --to compressed-tensors -o " + (tmp / "b").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("model.layers.1.self_attn.k_proj int8") != std::string::npos);
  CHECK(r.err.find("qkv_proj") != std::string::npos);
  CHECK(!fs::exists(tmp / "b"));
  // Over the model itself, and over an existing output without --force.
  r = run_kldq("export " + model + " --base int8 --to compressed-tensors -o " + model);
  CHECK(r.rc == 2);
  CHECK(fs::exists(kWiki / "model.safetensors"));
  REQUIRE(run_kldq("export " + model + " --base int8 --to compressed-tensors -o " +
                   (tmp / "c").string())
              .rc == 0);
  r = run_kldq("export " + model + " --base int8 --to compressed-tensors -o " +
               (tmp / "c").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("--force") != std::string::npos);
  kldq::test::write_text(tmp / "x.gguf", "keep");
  r = run_kldq("export " + model + " --base int8 --to gguf -o " + (tmp / "x.gguf").string());
  CHECK(r.rc == 2);
  CHECK(kldq::test::read_text(tmp / "x.gguf") == "keep");
  // Refused before quantizing: a plan with no quantized layer has no compressed-tensors config.
  r = run_kldq("export " + model + " --base bf16 --to compressed-tensors -o " +
               (tmp / "dense").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("no layer is quantized") != std::string::npos);
  CHECK(!fs::exists(tmp / "dense"));
  r = run_kldq("export " + model + " --to onnx -o " + (tmp / "d").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("onnx") != std::string::npos);

  // compressed-tensors checkpoints kldq cannot read exactly: one error each, naming the key.
  auto edited = [&](const std::string& dir, auto&& edit) {
    fs::copy(tmp / "c", tmp / dir, fs::copy_options::recursive);
    nlohmann::json c = nlohmann::json::parse(kldq::test::read_text(tmp / dir / "config.json"));
    edit(c["quantization_config"]);
    kldq::test::write_text(tmp / dir / "config.json", c.dump());
    return run_kldq("inspect " + (tmp / dir).string());
  };
  r = edited("act", [](nlohmann::json& q) {
    q["config_groups"]["group_0"]["input_activations"] = {{"num_bits", 8}, {"type", "int"}};
  });
  CHECK(r.rc == 2);
  CHECK(r.err.find("input_activations: activation quantization") != std::string::npos);
  r = edited("sparse", [](nlohmann::json& q) { q["sparsity_config"] = {{"format", "sparse-24"}}; });
  CHECK(r.rc == 2);
  CHECK(r.err.find("sparsity_config") != std::string::npos);
  r = edited("bits",
             [](nlohmann::json& q) { q["config_groups"]["group_0"]["weights"]["num_bits"] = 6; });
  CHECK(r.rc == 2);
  CHECK(r.err.find("6-bit") != std::string::npos);
  r = edited("symmetric", [](nlohmann::json& q) {
    q["config_groups"]["group_0"]["weights"]["symmetric"] = "false";
  });
  CHECK(r.rc == 2);
  CHECK(r.err.find("symmetric: expected true or false") != std::string::npos);
  // Python's re.match semantics: `$` ends one alternative only, so this still targets every
  // layer (the first alternative matches a prefix).
  r = edited("alternation", [](nlohmann::json& q) {
    q["config_groups"]["group_0"]["targets"] = {"re:model\\.layers|.*k_proj$"};
  });
  INFO(r.err);
  CHECK(r.rc == 0);
  const size_t at = r.out.find("model.layers.3.mlp.down_proj");
  REQUIRE(at != std::string::npos);
  CHECK(r.out.substr(at, r.out.find('\n', at) - at).find("int8") != std::string::npos);
  r = edited("other", [](nlohmann::json& q) { q["quant_method"] = "gptq"; });
  CHECK(r.rc == 2);
  CHECK(r.err.find("quant_method 'gptq'") != std::string::npos);
}

TEST_CASE("kldq run exports every point's plan (export.to), fused groups planned together",
          "[export][experiment]") {
  kldq::test::TempDir dir("export-run");
  const fs::path src = KLDQ_SOURCE_DIR;
  const std::string head = fmt::format(
      R"(name: exports
models: ['{}']
data: {{calib: '{}', ppl: '{}'}}
calibration: {{samples: 4, seq_len: 64, seed: 0}}
profile: {{method: rtn, mode: quantize-one}}
eval: {{ctx: 128, kld: true}}
output: '{}'
)",
      kWiki.string(), (src / "data/demo/wiki.test.tail.txt").string(),
      (src / "data/demo/wiki.test.head.txt").string(), (dir / "out").string());
  const std::string sweep = "sweep: {base: int4_g32, planner: restore-top, restore_top: 30}\n";
  // Before any work: compressed-tensors needs fused groups, and formats it can hold.
  kldq::test::write_text(dir / "a.yaml", head + sweep + "export: {to: [compressed-tensors]}\n");
  auto r = run_kldq("run " + (dir / "a.yaml").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("needs plan.fused_groups: true") != std::string::npos);
  kldq::test::write_text(dir / "b.yaml", head + "sweep: {base: nf4, planner: uniform}\n" +
                                             "export: {to: [compressed-tensors]}\n");
  r = run_kldq("run " + (dir / "b.yaml").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("base nf4: no nf4 in compressed-tensors") != std::string::npos);
  CHECK(!fs::exists(dir / "out"));
  kldq::test::write_text(dir / "c.yaml", head +
                                             "sweep: {base: int4_g32, planner: restore-top, "
                                             "restore_top: 100}\nplan: {fused_groups: true}\n"
                                             "export: {to: [compressed-tensors]}\n");
  r = run_kldq("run " + (dir / "c.yaml").string());
  CHECK(r.rc == 2);
  CHECK(r.err.find("quantizes no layer") != std::string::npos);
  CHECK(!fs::exists(dir / "out"));

  kldq::test::write_text(dir / "e.yaml", head + sweep +
                                             "plan: {fused_groups: true}\n"
                                             "export: {to: [compressed-tensors, gguf]}\n");
  r = run_kldq("run " + (dir / "e.yaml").string() + " --device cpu");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  std::map<std::string, fs::path> exported;  // target -> export stage directory
  fs::path plan;
  for (const auto& d : fs::directory_iterator(dir / "out" / "stages")) {
    if (!fs::exists(d.path() / "export.json")) continue;
    const auto j = nlohmann::json::parse(kldq::test::read_text(d.path() / "export.json"));
    exported[j["to"]] = d.path() / j["path"].get<std::string>();
    plan = dir / "out" / j["plan"].get<std::string>();
  }
  REQUIRE(exported.size() == 2);
  const auto p = nlohmann::json::parse(kldq::test::read_text(plan));
  CHECK(p["planner"]["fused_groups"] == true);
  // The exported checkpoint holds exactly the plan's weights (kldq quantize --plan).
  quantize(kWiki, plan, dir / "q");
  check_same_weights(dir / "q", exported["compressed-tensors"]);
  CHECK(fs::file_size(exported["gguf"]) > 0);
  // Run again: every stage, the exports included, is reused.
  r = run_kldq("run " + (dir / "e.yaml").string() + " --device cpu");
  REQUIRE(r.rc == 0);
  CHECK(r.err.find("export point 0") != std::string::npos);
  CHECK(r.err.find(" ...") == std::string::npos);  // nothing ran
}
