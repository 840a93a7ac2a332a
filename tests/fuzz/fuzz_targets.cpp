// Fuzz targets: each parses one input the way kldq reads that kind of file (through the same
// readers, so size caps, file-type checks and nesting limits are exercised too).
#include "fuzz_targets.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "kldq/core/error.hpp"
#include "kldq/eval/mmlu.hpp"
#include "kldq/eval/tasks.hpp"
#include "kldq/experiment/config.hpp"
#include "kldq/io/corpus.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/io/tokenizer/regex.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/io/tokenizer/unicode.hpp"
#include "kldq/model/config.hpp"
#include "kldq/plan/planner.hpp"
#include "kldq/quant/plan.hpp"

namespace kldq::fuzz {
namespace {
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void put(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

// Files of the repository (always there) and of ../shared/data (when present).
std::vector<fs::path> existing(std::initializer_list<const char*> rels) {
  std::vector<fs::path> out;
  const fs::path shared = std::getenv("KLDQ_SHARED_DATA")
                              ? fs::path(std::getenv("KLDQ_SHARED_DATA"))
                              : fs::path(KLDQ_SOURCE_DIR) / "../shared/data";
  for (const char* r : rels)
    for (const fs::path& base : {fs::path(KLDQ_SOURCE_DIR), shared})
      if (fs::is_regular_file(base / r)) out.push_back(base / r);
  return out;
}

std::vector<std::string> seeds_of(std::initializer_list<const char*> rels,
                                  std::vector<std::string> extra = {}) {
  std::vector<std::string> s;
  for (const auto& p : existing(rels)) s.push_back(slurp(p));
  s.insert(s.end(), extra.begin(), extra.end());
  return s;
}

// A small safetensors file of every dtype kldq reads, as bytes.
std::string small_safetensors(const fs::path& work) {
  const fs::path p = work / "seed.safetensors";
  io::write_safetensors(p,
                        {{"a", at::arange(6, at::kFloat).view({2, 3})},
                         {"b", at::ones({4}, at::kBFloat16)},
                         {"c", at::zeros({0, 2}, at::kHalf)},
                         {"d", at::arange(8, at::kByte)},
                         {"e", at::arange(3, at::kLong)}},
                        {{"format", "pt"}});
  return slurp(p);
}

// The header JSON of a safetensors file.
std::string header_of(const std::string& bytes) {
  if (bytes.size() < 8) return "{}";
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return bytes.substr(8, std::min<uint64_t>(n, bytes.size() - 8));
}

const char* kPlan = R"({"method": "rtn", "base": "nf4", "overrides": [
  {"layers": "model.layers.*.mlp.down_proj", "format": "bf16"},
  {"layers": "re:model\\.layers\\.(0|1)\\.self_attn\\..*", "format": "int8"}],
  "planner": {"strategy": "restore-top", "model": "m", "model_fingerprint": "f",
  "predicted_kl": 0.1, "percent": 10.0, "by": "count", "params": 100, "seed": 3,
  "unit_formats": {"model.layers.0.mlp.up_proj": "nf4"}}})";

const char* kProfile = R"({"mode": "quantize-one", "granularity": "linear", "base": "nf4",
  "method": "rtn", "model": "m", "model_fingerprint": "f", "calibration": {"file": "c.txt",
  "sha256": "ab", "samples": 8, "seq_len": 64, "seed": 0, "file_tokens": 999},
  "baseline_kl": 0.5, "units": [
  {"id": "model.layers.0.mlp.up_proj", "params": 10, "bytes_base": 5, "bytes_bf16": 20,
   "kl_mean": 0.1, "kl_stderr": 0.01},
  {"id": "model.layers.0.mlp.down_proj", "params": 10, "bytes_base": 5, "bytes_bf16": 20,
   "kl_mean": 0.2, "kl_stderr": 0.01}]})";

const char* kPatterns[] = {
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "(?:a+)+b", "[\\x{4e00}-\\x{9fff}]+|\\p{N}"};

}  // namespace

std::vector<Target> all_targets(const fs::path& work) {
  fs::create_directories(work / "tok");
  fs::create_directories(work / "mmlu" / "test");
  fs::create_directories(work / "mmlu" / "dev");
  fs::create_directories(work / "tasks" / "hellaswag");
  fs::create_directories(work / "tasks" / "winogrande");
  const std::string text =
      slurp(fs::path(KLDQ_SOURCE_DIR) / "data/demo/wiki.test.head.txt").substr(0, 2000) +
      " \xe4\xbd\xa0\xe5\xa5\xbd 123456 'll   \n\n\r\n ";
  std::vector<Target> t;
  t.push_back({"safetensors", {small_safetensors(work)}, [work](const std::string& in) {
                 put(work / "x.safetensors", in);
                 const auto f = io::SafetensorsFile::open(work / "x.safetensors");
                 for (const auto& info : f->tensors())
                   (void)f->tensor(info.name).to(at::kFloat).sum();
               }});
  std::vector<std::string> headers;
  for (const auto& p : existing({"models/wikitext-qwen2-4m/model.safetensors",
                                 "models/stories260k-qwen2/model.safetensors"}))
    headers.push_back(header_of(slurp(p)));
  headers.push_back(header_of(t.front().seeds.front()));
  t.push_back({"header", headers, [](const std::string& in) {
                 // The data size the header's own offsets imply, so inputs get past the tiling
                 // check as often as they are consistent.
                 uint64_t end = 0;
                 const auto j = nlohmann::json::parse(in, nullptr, false);
                 if (j.is_object())
                   for (const auto& [k, v] : j.items())
                     if (v.is_object() && v.contains("data_offsets") &&
                         v["data_offsets"].is_array() && v["data_offsets"].size() == 2 &&
                         v["data_offsets"][1].is_number_unsigned())
                       end = std::max(end, v["data_offsets"][1].get<uint64_t>());
                 std::vector<io::TensorInfo> tensors;
                 std::map<std::string, std::string> meta;
                 io::parse_safetensors_header(in, end, "fuzz", tensors, meta);
               }});
  t.push_back(
      {"config",
       seeds_of({"models/wikitext-qwen2-4m/config.json", "models/stories260k-qwen2/config.json",
                 "models/stories260k-llama/config.json"}),
       [work](const std::string& in) {
         put(work / "config.json", in);
         (void)model::load_config(work / "config.json");
       }});
  t.push_back({"tokenizer",
               seeds_of({"models/stories260k-qwen2/tokenizer.json",
                         "models/wikitext-qwen2-4m/tokenizer.json"}),
               [work, text](const std::string& in) {
                 put(work / "tok" / "tokenizer.json", in);
                 const auto tok = io::Tokenizer::from_json_file(work / "tok" / "tokenizer.json");
                 (void)tok->decode(tok->encode(text));
               }});
  std::vector<std::string> regex_seeds;
  for (const char* p : kPatterns) regex_seeds.push_back(std::string(p) + "\n" + text);
  t.push_back({"regex", regex_seeds, [](const std::string& in) {
                 const size_t nl = in.find('\n');
                 const io::Regex re = io::Regex::compile(in.substr(0, nl));
                 const std::u32string s =
                     io::unicode::decode_utf8(nl == std::string::npos ? "" : in.substr(nl + 1));
                 io::Regex::Budget budget(s.size());
                 for (size_t pos = 0; pos <= s.size();) {
                   const auto m = re.find(s, pos, &budget);
                   if (!m) break;
                   pos = m->second > m->first ? m->second : m->first + 1;
                 }
               }});
  t.push_back({"experiment",
               seeds_of({"configs/demo.yaml", "configs/exp1_sensitivity.yaml",
                         "configs/exp2_methods.yaml", "configs/exp3_scaling.yaml"}),
               [work](const std::string& in) {
                 put(work / "exp.yaml", in);
                 (void)experiment::load_experiment((work / "exp.yaml").string());
               }});
  t.push_back({"plan", {kPlan}, [work](const std::string& in) {
                 put(work / "plan.json", in);
                 const auto p = quant::Plan::from_json(io::read_json_file(work / "plan.json", true),
                                                       "plan.json");
                 std::vector<model::LayerId> ids;
                 for (int b = 0; b < 2; ++b)
                   for (model::Proj pr : model::kAllProjs) ids.push_back({b, pr});
                 (void)p.resolve(ids, nullptr);
               }});
  t.push_back({"profile", {kProfile}, [work](const std::string& in) {
                 put(work / "profile.json", in);
                 (void)plan::Profile::from_json(io::read_json_file(work / "profile.json", true),
                                                "profile.json");
               }});
  t.push_back(
      {"mmlu-csv",
       seeds_of({"data/demo/mmlu/dev/marketing_dev.csv", "data/demo/mmlu/dev/prehistory_dev.csv"}),
       [work](const std::string& in) {
         put(work / "mmlu" / "test" / "marketing_test.csv", in);
         put(work / "mmlu" / "dev" / "marketing_dev.csv", in);
         (void)eval::load_mmlu(work / "mmlu");
       }});
  // The zero-shot task readers: one input as a generic task, as HellaSwag's 6-line text and as
  // WinoGrande's JSONL (the first 30 items of each seed file from ../shared/data/mc when present).
  std::vector<std::string> task_seeds = {
      R"({"context": "2+2=", "choices": ["4", "5"], "answer": 0})"
      "\n"
      R"({"context": "caf\u00e9 ", "choices": ["a", "b", "c"], "answer": 2})",
      "Roof: A man is on a roof. he\n2\nis [title] up.\n  takes [x] off\nx\ny\n",
      R"({"qID": "q", "sentence": "A beat B so _ won.", "option1": "A", "option2": "B",)"
      R"( "answer": "2"})"};
  for (const std::string& f :
       seeds_of({"mc/hellaswag/hellaswag_val_full.txt", "mc/winogrande/dev.jsonl",
                 "mc/arc_easy/ARC-Easy-Test.jsonl"})) {
    size_t cut = 0;
    for (int line = 0; line < 180 && cut != std::string::npos; ++line) cut = f.find('\n', cut + 1);
    task_seeds.push_back(f.substr(0, cut));
  }
  t.push_back({"tasks", task_seeds, [work](const std::string& in) {
                 put(work / "tasks" / "mine.jsonl", in);
                 put(work / "tasks" / "hellaswag" / "hellaswag_val_full.txt", in);
                 put(work / "tasks" / "winogrande" / "dev.jsonl", in);
                 std::exception_ptr refused;  // rethrown when all three refuse (a refusal)
                 int accepted = 0;
                 for (const char* name : {"mine", "hellaswag", "winogrande"}) try {
                     (void)eval::load_task(name, work / "tasks", 0);
                     ++accepted;
                   } catch (const Error&) {
                     refused = std::current_exception();
                   }
                 if (accepted == 0) std::rethrow_exception(refused);
               }});
  t.push_back({"corpus",
               {R"({"text": "Hello world."})"
                "\n"
                R"({"text": "\u00e9t\u00e9\n"})",
                text},
               [work](const std::string& in) {
                 put(work / "c.jsonl", in);
                 (void)io::read_corpus(work / "c.jsonl");
               }});
  return t;
}

}  // namespace kldq::fuzz
