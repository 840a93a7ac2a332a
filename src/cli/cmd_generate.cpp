// `kldq generate MODEL [--base F | --plan P] (--prompt TEXT | --prompts FILE.jsonl)
// [--max-new-tokens N] [--temperature T --top-p P --top-k K --seed S] [--chat] [-o out.jsonl]`:
// text from the model as it is or quantized in memory, with the KV cache (eval/generate.hpp).
// One prompt streams its text to stdout; several print (or write to -o) one JSON line each.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "common.hpp"
#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/eval/generate.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/layout.hpp"

namespace kldq::cli {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxPrompts = 100000;

struct GenerateCliOptions {
  std::string model, base, plan, prompt, prompts, out;
  int64_t max_new_tokens = 128, batch = 16;
  eval::Sampling sampling;
  bool chat = false, ignore_eos = false, no_cuda_graph = false;
  MethodCliOptions method;
  ComputeOptions compute;
};

// A prompt as text, or as token ids (parity checks against other implementations).
struct Prompt {
  std::string text;
  std::vector<int64_t> ids;
};

// --prompts: one prompt per line, {"prompt": "..."}, a JSON string, or {"ids": [...]}; blank
// lines skipped.
std::vector<Prompt> read_prompts(const std::string& path, int64_t vocab) {
  std::istringstream in(read_input_file(path, kMaxDocumentBytes, /*config=*/true));
  std::vector<Prompt> out;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, n);
    const nlohmann::json j = io::parse_json(line, where, /*config=*/true);
    if (j.is_string()) {
      out.push_back({j.get<std::string>(), {}});
    } else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) {
      out.push_back({j["prompt"].get<std::string>(), {}});
    } else if (j.is_object() && j.contains("ids") && j["ids"].is_array()) {
      out.push_back({});
      for (const auto& v : j["ids"]) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
          throw ConfigError(fmt::format("{}: ids: expected token ids in [0, {})", where, vocab));
        out.back().ids.push_back(v.get<int64_t>());
      }
      if (out.back().ids.empty()) throw ConfigError(fmt::format("{}: an empty prompt", where));
    } else {
      throw ConfigError(fmt::format(
          "{}: expected {{\"prompt\": \"...\"}}, a JSON string or {{\"ids\": [...]}}", where));
    }
    if (out.back().ids.empty() && out.back().text.empty())
      throw ConfigError(fmt::format("{}: an empty prompt", where));
    if (out.size() > kMaxPrompts)
      throw ConfigError(fmt::format("{}: more than {} prompts", path, kMaxPrompts));
  }
  if (out.empty()) throw ConfigError(fmt::format("{}: no prompts", path));
  return out;
}

// ChatML (Qwen2, Qwen2.5), the one chat format kldq knows: recognised from the checkpoint's
// tokenizer_config.json chat_template, with the template's default system message when it has
// one (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ..."), as apply_chat_template gives
// for one user message with add_generation_prompt.
std::string chatml(const fs::path& model, const std::string& user) {
  const fs::path file = model / "tokenizer_config.json";
  const nlohmann::json j =
      fs::is_regular_file(file) ? io::read_json_file(file, true) : nlohmann::json::object();
  const std::string t =
      j.is_object() && j.contains("chat_template") && j["chat_template"].is_string()
          ? j["chat_template"].get<std::string>()
          : "";
  if (t.find("<|im_start|>") == std::string::npos || t.find("<|im_end|>") == std::string::npos)
    throw ConfigError(fmt::format(
        "--chat: {} has no ChatML chat_template (<|im_start|> ... <|im_end|>); kldq knows "
        "ChatML only (Qwen2/Qwen2.5): give the formatted prompt without --chat",
        file.string()));
  // The default system message: a literal '<|im_start|>system\n...<|im_end|>' in the template.
  std::string system;
  const std::string open = "<|im_start|>system\\n";
  for (size_t at = t.find(open); at != std::string::npos; at = t.find(open, at + 1)) {
    const size_t begin = at + open.size(), end = t.find("<|im_end|>", begin);
    const std::string text = t.substr(begin, end == std::string::npos ? 0 : end - begin);
    if (end != std::string::npos && text.find_first_of("'\"{}") == std::string::npos) {
      system = text;
      break;
    }
  }
  std::string s;
  if (!system.empty()) s = "<|im_start|>system\n" + system + "<|im_end|>\n";
  return s + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n";
}

// Device bytes: weights (and packed layers of a plan), one batch's forward, its KV cache, and the
// head's logits of one row per prompt (the in-memory quantization's own needs come on top).
model::MemoryNeeds generate_needs(const GenerateCliOptions& o,
                                  const std::optional<quant::Plan>& plan,
                                  const model::ModelConfig& c, int64_t rows, int64_t cap,
                                  const RunContext& ctx) {
  model::MemoryNeeds n = model::Decoder::weight_needs(o.model, ctx.dtype);
  if (plan) add_plan_bytes(n, *plan, c);
  const uint64_t elt = c10::elementSize(ctx.dtype);
  const uint64_t kv =
      2ULL * uint64_t(c.num_layers) * uint64_t(rows) * uint64_t(c.kv_dim()) * uint64_t(cap) * elt;
  // The prefill's attention mask [rows, 1, cap, cap] with its intermediates, and the scores
  // [rows, heads, cap, cap] in fp32 should SDPA fall back to its math kernel for a masked GQA.
  const uint64_t square = uint64_t(rows) * uint64_t(cap) * uint64_t(cap);
  n.working = model::forward_bytes(c, rows, cap, ctx.dtype) + kv +
              square * (4 + 4 * uint64_t(c.num_heads)) + model::head_bytes(c, rows, elt + 8) +
              (256ULL << 20);
  return n;
}

void check_options(const GenerateCliOptions& o) {
  if (o.prompt.empty() == o.prompts.empty())
    throw ConfigError("give exactly one of --prompt TEXT and --prompts FILE.jsonl");
  require_checkpoint_dir(o.model);
  const eval::Sampling& s = o.sampling;
  // Below 1e-3 the scaled fp32 logits overflow; such a temperature is greedy in effect.
  if (!(s.temperature == 0 || (s.temperature >= 1e-3 && s.temperature <= 1e4)))
    throw ConfigError("--temperature: expected 0 (greedy) or a number in [0.001, 10000]");
  if (!(s.top_p > 0 && s.top_p <= 1)) throw ConfigError("--top-p: expected a number in (0, 1]");
  if (s.temperature == 0 && (s.top_p < 1 || s.top_k > 0))
    throw ConfigError("--top-p and --top-k: sampling options; they need --temperature > 0");
}

// The prompts as token ids, and the tokenizer: needed for text prompts; for prompts of ids only
// when the checkpoint has one (the output's text then stays empty).
struct Tokenized {
  std::unique_ptr<io::Tokenizer> tokenizer;
  std::vector<std::vector<int64_t>> prompts;
  int64_t longest = 0;

  std::string decode(const std::vector<int64_t>& ids) const {
    return tokenizer ? tokenizer->decode(std::vector<int32_t>(ids.begin(), ids.end()), true) : "";
  }
};

Tokenized tokenize(const GenerateCliOptions& o, const std::vector<Prompt>& texts) {
  Tokenized t;
  bool text = false;
  for (const Prompt& p : texts) text = text || p.ids.empty();
  const fs::path dir(o.model);
  if (text || fs::exists(dir / "tokenizer.json") || fs::exists(dir / "tokenizer.model"))
    t.tokenizer = io::Tokenizer::load(o.model);
  for (const Prompt& p : texts) {
    if (p.ids.empty()) {
      const auto ids = t.tokenizer->encode(o.chat ? chatml(o.model, p.text) : p.text);
      if (ids.empty())
        throw ConfigError(fmt::format("prompt \"{}\" has no tokens", p.text.substr(0, 60)));
      t.prompts.emplace_back(ids.begin(), ids.end());
    } else {
      if (o.chat) throw ConfigError("--chat: applies to text prompts, not to {\"ids\": ...}");
      t.prompts.push_back(p.ids);
    }
    t.longest = std::max<int64_t>(t.longest, static_cast<int64_t>(t.prompts.back().size()));
  }
  return t;
}

// MODEL loaded within the memory budget, quantized in memory by the plan when there is one.
model::Decoder load_model(const GenerateCliOptions& o, const std::optional<quant::Plan>& plan,
                          const model::ModelConfig& config, int64_t rows, int64_t cap) {
  const RunContext ctx = context_from(o.compute);
  quant::MethodOptions method;
  std::optional<calib::Calibration> cal;
  if (plan) {
    method = method_options(o.method, plan->method, &*plan);
    cal = method_calibration(o.method, method.method, o.model, &*plan);
  }
  model::MemoryNeeds needs = generate_needs(o, plan, config, rows, cap, ctx);
  if (plan) add_quantize_working(needs, method, cal, config, ctx.dtype);
  const model::MemoryPlan residency =
      plan_residency(ctx, o.compute, needs, "--batch or --max-new-tokens");
  model::Decoder m = model::Decoder::load(o.model, ctx.device, ctx.dtype, residency.streamed);
  if (plan)
    quant::apply_layers(m, quant::quantize_layers(m, plan->resolve(m.linear_ids()), method,
                                                  cal ? cal->ids : at::Tensor()));
  return m;
}

// One JSON line of a generated row: its prompt, new tokens and text, and why it stopped.
std::string result_line(const std::string& prompt, size_t prompt_tokens,
                        const std::vector<int64_t>& toks, const Tokenized& t,
                        const std::vector<int64_t>& stop) {
  const bool eos = !toks.empty() && std::find(stop.begin(), stop.end(), toks.back()) != stop.end();
  return nlohmann::json({{"prompt", prompt},
                         {"prompt_tokens", prompt_tokens},
                         {"tokens", toks},
                         {"text", t.decode(toks)},
                         {"stop", eos ? "eos" : "length"}})
             .dump() +
         "\n";
}

// The prefill and decode rates; decode: tokens after each row's first, over the time after the
// first step.
void log_rates(const eval::GenerateStats& stats, size_t prompts, int64_t rows,
               const std::string& where) {
  const auto rate = [](double n, double s) { return s > 0 ? n / s : 0.0; };
  log::info(
      "{} prompt(s), batch {}: prefill {} tokens in {:.3f} s ({:.0f} tokens/s), {} new "
      "tokens in {:.3f} s of decoding ({:.1f} tokens/s){}",
      prompts, rows, stats.prompt_tokens, stats.prefill_s,
      rate(double(stats.prompt_tokens), stats.prefill_s), stats.new_tokens, stats.decode_s,
      rate(double(stats.new_tokens) - double(prompts), stats.decode_s), where);
}

int run_generate(const GenerateCliOptions& o) {
  check_options(o);
  const fs::path out = o.out.empty() ? fs::path() : file_output(o.out, "-o", {o.model, o.prompts});
  const std::optional<quant::Plan> plan = plan_from(o.model, o.base, o.plan, o.method);
  if (!plan && (!o.method.method.empty() || !o.method.calib.empty() || o.method.group))
    throw ConfigError(
        "--method, --group and --calib quantize in memory; they need --base or --plan");
  const model::ModelConfig config = model::load_config(fs::path(o.model) / "config.json");
  const std::vector<Prompt> texts = o.prompts.empty() ? std::vector<Prompt>{{o.prompt, {}}}
                                                      : read_prompts(o.prompts, config.vocab_size);
  const Tokenized t = tokenize(o, texts);
  if (t.longest + o.max_new_tokens > config.max_position_embeddings)
    throw ConfigError(fmt::format(
        "the longest prompt ({} tokens) and --max-new-tokens {} exceed the model's context of {} "
        "(max_position_embeddings)",
        t.longest, o.max_new_tokens, config.max_position_embeddings));
  const int64_t rows = std::min<int64_t>(o.batch, static_cast<int64_t>(t.prompts.size()));
  const model::Decoder m = load_model(o, plan, config, rows, t.longest + o.max_new_tokens);

  eval::GenerateOptions g{o.max_new_tokens, o.sampling,
                          o.ignore_eos ? std::vector<int64_t>() : eval::stop_tokens(o.model),
                          !o.no_cuda_graph};
  // One prompt without -o streams its text: the decoded new tokens, printed as they grow (a
  // token that ends inside a UTF-8 sequence waits; text that a later token rewrites, as some
  // decoders' clean-up does, is printed whole at the end instead).
  const bool stream = texts.size() == 1 && out.empty();
  std::vector<int64_t> so_far;
  std::string printed;
  auto on_token = [&](size_t, int64_t id) {
    so_far.push_back(id);
    const std::string now = t.decode(so_far);
    if (now.size() > printed.size() && now.starts_with(printed) && !now.ends_with("\xEF\xBF\xBD")) {
      std::cout << now.substr(printed.size()) << std::flush;
      printed = now;
    }
  };
  at::InferenceMode guard;
  at::Generator gen = at::detail::createCPUGenerator(o.sampling.seed);  // one for all batches
  std::string lines;
  eval::GenerateStats stats;
  for (const auto [first, n] : batches(static_cast<int64_t>(t.prompts.size()), rows)) {
    const std::vector<std::vector<int64_t>> part(t.prompts.begin() + first,
                                                 t.prompts.begin() + first + n);
    const auto news = eval::generate(
        m, part, g, stream ? on_token : std::function<void(size_t, int64_t)>(), &stats, &gen);
    for (size_t i = 0; i < news.size(); ++i)
      lines += result_line(texts[static_cast<size_t>(first) + i].text, part[i].size(), news[i], t,
                           g.stop);
  }
  if (stream) {
    const std::string all = t.decode(so_far);
    std::cout << (all.starts_with(printed) ? all.substr(printed.size()) : "\n" + all) << "\n";
  } else if (out.empty()) {
    std::cout << lines;
  } else {
    io::write_file_atomic(out, lines);
  }
  log_rates(stats, texts.size(), rows, out.empty() ? "" : ", written to " + o.out);
  return 0;
}

}  // namespace

void register_generate(CLI::App& app, Action& action) {
  auto opts = std::make_shared<GenerateCliOptions>();
  auto* sub = app.add_subcommand("generate", "generate text (greedy or sampled) with a KV cache");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  sub->add_option("--base", opts->base, "quantize every linear layer to this format in memory");
  sub->add_option("--plan", opts->plan, "quantize in memory by this plan (kldq plan)");
  sub->add_option("--prompt", opts->prompt, "the prompt text");
  sub->add_option("--prompts", opts->prompts, "JSONL file: {\"prompt\": ...} or a string per line");
  sub->add_option("--max-new-tokens", opts->max_new_tokens, "new tokens at most (default 128)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  sub->add_option("--temperature", opts->sampling.temperature, "0 (default): greedy");
  sub->add_option("--top-p", opts->sampling.top_p, "nucleus sampling mass (default 1: off)");
  sub->add_option("--top-k", opts->sampling.top_k, "sample among the k most likely (0: off)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  sub->add_option("--seed", opts->sampling.seed, "sampling seed (default 0)");
  sub->add_flag("--chat", opts->chat, "wrap each prompt in the model's ChatML chat format");
  sub->add_flag("--ignore-eos", opts->ignore_eos,
                "generate --max-new-tokens for every prompt (speed measurements)");
  sub->add_flag("--no-cuda-graph", opts->no_cuda_graph,
                "launch each decode step's kernels one by one (default: replay a CUDA graph)");
  sub->add_option("--batch", opts->batch, "prompts generated together (default 16)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  sub->add_option("-o,--output", opts->out, "write one JSON line per prompt here");
  add_method_options(*sub, opts->method, /*with_calibration=*/true, /*with_seed=*/false);
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return run_generate(*opts); }; });
}

}  // namespace kldq::cli
