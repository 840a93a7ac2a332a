// The generate task (eval/generate_task.hpp): prompts read and tokenized, the model loaded within
// the memory budget and quantized in memory by a plan, then batches of prompts generated.
#include "kldq/eval/generate_task.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/core/batches.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/fs.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/tokenizer/tokenizer.hpp"
#include "kldq/model/config.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::eval {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxPrompts = 100000;

// A prompt as text, or as token ids (parity checks against other implementations).
struct Prompt {
  std::string text;
  std::vector<int64_t> ids;
};

// --prompts: one prompt per line, {"prompt": "..."}, a JSON string, or {"ids": [...]}; blank
// lines skipped.
std::vector<Prompt> read_prompts(const std::string& path, int64_t vocab) {
  std::vector<Prompt> out;
  const auto row = [&](const nlohmann::json& j, const std::string& where) {
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
  };
  io::for_each_jsonl_row(read_input_file(path, kMaxDocumentBytes, /*config=*/true), path,
                         /*config=*/true, row);
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
model::MemoryNeeds generate_needs(const GenerateRequest& o, const std::optional<quant::Plan>& plan,
                                  const model::ModelConfig& c, int64_t rows, int64_t cap,
                                  const RunContext& ctx) {
  model::MemoryNeeds n = model::Decoder::weight_needs(o.model, ctx.dtype);
  if (plan) quant::add_plan_bytes(n, *plan, c);
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

void check_options(const GenerateRequest& o) {
  if (o.prompt.empty() == o.prompts.empty())
    throw ConfigError("give exactly one of --prompt TEXT and --prompts FILE.jsonl");
  io::require_checkpoint_dir(o.model);
  const Sampling& s = o.sampling;
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

Tokenized tokenize(const GenerateRequest& o, const std::vector<Prompt>& texts) {
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
model::Decoder load_model(const GenerateRequest& o, const std::optional<quant::Plan>& plan,
                          const model::ModelConfig& config, int64_t rows, int64_t cap) {
  const RunContext ctx = model::context_from(o.compute);
  quant::MethodOptions method;
  std::optional<calib::Calibration> cal;
  if (plan) {
    method = quant::resolve_method(o.method, plan->method, &*plan);
    cal = quant::resolve_calibration(o.method, method.method, o.model, &*plan);
  }
  model::MemoryNeeds needs = generate_needs(o, plan, config, rows, cap, ctx);
  if (plan) quant::add_quantize_working(needs, method, cal, config, ctx.dtype);
  const model::MemoryPlan residency =
      model::plan_residency(ctx, o.compute, needs, "--batch or --max-new-tokens");
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

}  // namespace

GenerateReport generate_texts(const GenerateRequest& o,
                              const std::function<void(const std::string&)>& on_text) {
  check_options(o);
  const fs::path out = o.out.empty() ? fs::path() : file_output(o.out, "-o", {o.model, o.prompts});
  const std::optional<quant::Plan> plan = quant::resolve_plan(o.model, o.base, o.plan, o.method);
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
  GenerateReport r;
  r.prompts = texts.size();
  r.rows = std::min<int64_t>(o.batch, static_cast<int64_t>(t.prompts.size()));
  const model::Decoder m = load_model(o, plan, config, r.rows, t.longest + o.max_new_tokens);

  GenerateOptions g{o.max_new_tokens, o.sampling,
                    o.ignore_eos ? std::vector<int64_t>() : stop_tokens(o.model), !o.no_cuda_graph};
  // One prompt without -o streams its text: the decoded new tokens, passed on as they grow (a
  // token that ends inside a UTF-8 sequence waits; text that a later token rewrites, as some
  // decoders' clean-up does, is passed whole at the end instead).
  const bool stream = texts.size() == 1 && out.empty() && on_text;
  std::vector<int64_t> so_far;
  std::string printed;
  auto on_token = [&](size_t, int64_t id) {
    so_far.push_back(id);
    const std::string now = t.decode(so_far);
    if (now.size() > printed.size() && now.starts_with(printed) && !now.ends_with("\xEF\xBF\xBD")) {
      on_text(now.substr(printed.size()));
      printed = now;
    }
  };
  at::InferenceMode guard;
  at::Generator gen = at::detail::createCPUGenerator(o.sampling.seed);  // one for all batches
  for (const auto [first, n] : batches(static_cast<int64_t>(t.prompts.size()), r.rows)) {
    const std::vector<std::vector<int64_t>> part(t.prompts.begin() + first,
                                                 t.prompts.begin() + first + n);
    const auto news = generate(
        m, part, g, stream ? on_token : std::function<void(size_t, int64_t)>(), &r.stats, &gen);
    for (size_t i = 0; i < news.size(); ++i)
      r.lines += result_line(texts[static_cast<size_t>(first) + i].text, part[i].size(), news[i], t,
                             g.stop);
  }
  if (stream) {
    const std::string all = t.decode(so_far);
    on_text((all.starts_with(printed) ? all.substr(printed.size()) : "\n" + all) + "\n");
    r.streamed = true;
  } else if (!out.empty()) {
    io::write_file_atomic(out, r.lines);
  }
  return r;
}

}  // namespace kldq::eval
