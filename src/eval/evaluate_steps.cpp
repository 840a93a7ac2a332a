// The steps of the eval task (evaluate_steps.hpp): its device memory, the models loaded (the
// reference sharing MODEL's weights), its data read and fitted, and each measurement.
#include "evaluate_steps.hpp"

#include <fmt/format.h>

#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/eval/flips.hpp"
#include "kldq/eval/loglik.hpp"
#include "kldq/eval/memory.hpp"
#include "kldq/eval/merge.hpp"
#include "kldq/eval/speed.hpp"
#include "kldq/model/config.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::eval {
namespace fs = std::filesystem;
namespace {

// Device bytes of one batch of task items (tasks_score.cpp): B items' shared prefixes [B, P]
// run into a cache of S = P + Tr columns, copied to one row per choice, and the choices' rests
// [B C, Tr] attending over it; attention counted as the math kernel allocates it (CUDA's fused
// kernels allocate less). A batch wider than the context runs its inputs whole (padded_width
// columns).
uint64_t tasks_working(const TaskInputs& t, int64_t batch, const model::ModelConfig& c,
                       c10::ScalarType dtype, bool cuda) {
  const uint64_t B = uint64_t(batch), R = B * uint64_t(t.max_choices), e = c10::elementSize(dtype);
  const uint64_t heads = uint64_t(c.num_heads), ctx = uint64_t(c.max_position_embeddings);
  const uint64_t P = uint64_t(t.max_shared), Tr = uint64_t(t.max_rest), S = std::min(P + Tr, ctx);
  const uint64_t kv = 2 * uint64_t(c.num_layers) * uint64_t(c.kv_dim()) * S * e;  // per row
  // The math kernel also repeats K and V to every query head over the S columns in fp32; the
  // mask is additive in the compute dtype, made from a boolean (at most 4 + 1 bytes per entry).
  const uint64_t kv_math = 2 * S * uint64_t(c.q_dim()) * 4;  // per row
  const uint64_t prefix = model::forward_bytes(c, int64_t(B), int64_t(P), dtype) +
                          B * (P * S * (4 * heads + 5) + kv_math);
  const uint64_t rest = model::forward_bytes(c, int64_t(R), int64_t(Tr), dtype) +
                        R * (Tr * S * (4 * heads + 5) + kv_math);
  const uint64_t cached = (B + R) * kv + std::max(prefix, rest);
  if (P + Tr <= ctx) return cached;
  const auto T = uint64_t(padded_width(std::min<int64_t>(t.max_tokens, c.max_position_embeddings),
                                       c.max_position_embeddings, cuda));  // whole inputs, causal
  return std::max(cached,
                  model::forward_bytes(c, int64_t(R), int64_t(T), dtype) + 4 * R * heads * T * T);
}

}  // namespace

// Device bytes of the evaluation: MODEL's weights (plus the packed layers of an in-memory plan;
// the reference shares MODEL's when it is MODEL), a separate --reference's weights block by
// block, and the working set of one batch of windows or prompts through both models.
model::MemoryNeeds eval_needs(const EvalRequest& o, const std::optional<quant::Plan>& plan,
                              const quant::MethodOptions& method,
                              const std::optional<calib::Calibration>& cal,
                              const model::ModelConfig& c, const Inputs& in, bool separate_ref,
                              const RunContext& ctx) {
  model::MemoryNeeds n = model::Decoder::weight_needs(o.model, ctx.dtype);
  if (plan) quant::add_plan_bytes(n, *plan, c);
  if (separate_ref) {
    const model::MemoryNeeds r = model::Decoder::weight_needs(o.reference, ctx.dtype);
    n.fixed += r.fixed;
    // Block i of both streams together; a reference of another depth stays resident whole.
    if (r.blocks.size() == n.blocks.size())
      for (size_t b = 0; b < n.blocks.size(); ++b) n.blocks[b] += r.blocks[b];
    else
      for (uint64_t bytes : r.blocks) n.fixed += bytes;
  }
  // MMLU's unshared batches run whole prompts at padded_width columns.
  const int64_t mmlu_T = padded_width(std::min<int64_t>(in.mmlu.max_len, 2048),
                                      c.max_position_embeddings, ctx.device.is_cuda());
  const int64_t T = std::max<int64_t>(o.ppl.empty() ? 0 : in.ppl.ctx, o.mmlu.empty() ? 0 : mmlu_T);
  n.working = 2 * model::forward_bytes(c, o.batch, T, ctx.dtype) +
              model::head_bytes(c, 1024, c10::elementSize(ctx.dtype) + 8) + (256ULL << 20);
  // MMLU's shared prefixes: a batch's keys and values over all blocks (and the one-row prefix),
  // and the attention mask [batch, 1, T, T] with its intermediates.
  const uint64_t L = uint64_t(std::min<int64_t>(c.max_position_embeddings, 2048));
  if (!o.mmlu.empty())
    n.working += 2 * uint64_t(c.num_layers) * uint64_t(o.batch + 1) * uint64_t(c.kv_dim()) * L *
                     c10::elementSize(ctx.dtype) +
                 4 * uint64_t(o.batch) * L * L;
  if (!o.tasks.empty())
    n.working += tasks_working(in.tasks, o.batch, c, ctx.dtype, ctx.device.is_cuda());
  if (o.speed) n.working += speed_working(c, SpeedProtocol{}, ctx.dtype);
  if (plan) quant::add_quantize_working(n, method, cal, c, ctx.dtype);
  return n;
}

// MODEL (quantized in memory when there is a plan) and the reference when one is needed: a
// separate --reference, else MODEL itself unquantized, whose weights the quantized model shares.
std::pair<model::Decoder, std::optional<model::Decoder>> load_models(
    const EvalRequest& o, const std::optional<quant::Plan>& plan,
    const quant::MethodOptions& method, const std::optional<calib::Calibration>& cal,
    const RunContext& ctx, bool need_ref, const std::vector<bool>& streamed,
    std::string& described) {
  std::optional<model::Decoder> ref;
  if (need_ref && !o.reference.empty()) {
    const bool same_depth =
        model::load_config(std::filesystem::path(o.reference) / "config.json").num_layers ==
        static_cast<int>(streamed.size());
    ref = model::Decoder::load(o.reference, ctx.device, ctx.dtype,
                               same_depth ? streamed : std::vector<bool>());
  }
  described = o.model;
  if (!plan)
    return {model::Decoder::load(o.model, ctx.device, ctx.dtype, streamed), std::move(ref)};
  model::Decoder m = model::Decoder::load(o.model, ctx.device, ctx.dtype, streamed);
  if (need_ref && o.reference.empty()) ref = m.share();
  quant::apply_layers(m, quant::quantize_layers(m, plan->resolve(m.linear_ids()), method,
                                                cal ? cal->ids : at::Tensor()));
  described += " (" + std::string(quant::method_name(plan->method)) + "/" + plan->base.name() +
               " in memory)";
  return {std::move(m), std::move(ref)};
}

// The run's memory, streaming and time figures.
EvalFigures run_figures(const RunContext& ctx, const std::string& residency,
                        uint64_t streamed_bytes, Clock::time_point t0) {
  EvalFigures f;
  f.peak_cuda_bytes = peak_allocated_bytes(ctx.device);
  f.peak_host_bytes = peak_host_bytes();
  f.residency = residency;
  f.streamed_bytes = streamed_bytes;
  log::debug("eval: {} copied host-to-device for streamed blocks; peak host memory {}",
             model::gib(streamed_bytes), model::gib(peak_host_bytes()));
  f.seconds = seconds_since(t0);
  return f;
}

// MODEL's config with the context and vocabulary both models share (into `config`), the
// tokenizer, and every measurement's data fitted to them.
Inputs load_inputs(const EvalRequest& o, model::ModelConfig& config,
                   std::unique_ptr<io::Tokenizer>& tokenizer) {
  // Windows and prompts must fit both models' context and vocabulary.
  config = model::load_config(fs::path(o.model) / "config.json");
  if (o.speed) check_speed_protocol(config, SpeedProtocol{});  // MODEL alone generates
  if (!o.reference.empty()) {
    const model::ModelConfig rc = model::load_config(fs::path(o.reference) / "config.json");
    config.max_position_embeddings =
        std::min(config.max_position_embeddings, rc.max_position_embeddings);
    config.vocab_size = std::min(config.vocab_size, rc.vocab_size);
  }
  Inputs in = settings_from(o, config.max_position_embeddings);
  // --speed alone generates from random ids: no tokenizer needed (synthesized checkpoints).
  if (o.ppl.empty() && o.mmlu.empty() && o.tasks.empty()) return in;
  tokenizer = io::Tokenizer::load(o.reference.empty() ? o.model : o.reference);
  read_data(o, *tokenizer, in);
  in.tasks = read_tasks(o, *tokenizer, config.max_position_embeddings, config.vocab_size);
  check_vocabulary(in, config.vocab_size);
  return in;
}

// Perplexity (and KL against `ref`, when given) over the --ppl windows into `out`.
void measure_ppl(const EvalRequest& o, const model::Decoder& m, const model::Decoder* r,
                 const Inputs& in, const std::optional<quant::Plan>& plan,
                 const std::string& described, Metrics& out) {
  const c10::Device device = m.device();
  log::info("eval {}: perplexity ({}), {} tokens of {}, {} windows of {}{}", described,
            ppl_protocol_name(in.ppl.protocol), in.tokens.size(), o.ppl, in.windows.size(),
            in.ppl.ctx,
            in.ppl.shard.whole()
                ? ""
                : fmt::format(" (shard {}: the batches with index % {} == {})", in.ppl.shard.name(),
                              in.ppl.shard.count, in.ppl.shard.index));
  if (device.is_cuda()) {
    // Warm-up on the first window, not timed: CUDA loads kernels lazily and cuBLAS picks
    // algorithms on first use, a one-time cost per process that the rate should not include.
    PplOptions whole = in.ppl;
    whole.shard = {};  // a shard may not own the first window
    score_windows(m, r, in.tokens, {in.windows.front()}, whole);
    device_synchronize(device);
  }
  const auto t = Clock::now();
  const TokenScores s = score_windows(m, r, in.tokens, in.windows, in.ppl);
  device_synchronize(device);
  const double secs = seconds_since(t);
  PplMetrics& p = out.ppl.emplace(ppl_metrics(s, o.kld));
  if (!in.ppl.shard.whole()) out.shard_data["ppl"] = ppl_shard_data(s, o.kld);
  // The plan's prediction from its profiles (their calibration text, not this one).
  if (o.kld && plan && plan->planner) p.plan_predicted_kl = plan->planner->predicted_kl;
  p.seconds_ppl = secs;
  p.tokens_per_second = double(s.nll.size()) / secs;
  p.settings = {ppl_protocol_name(in.ppl.protocol),
                in.ppl.ctx,
                std::nullopt,
                in.ppl.bos,
                o.ppl,
                in.ppl_sha256};
  if (in.ppl.protocol == PplProtocol::SLIDING)
    p.settings.stride = in.ppl.stride > 0 ? in.ppl.stride : in.ppl.ctx / 2;
}

// MMLU accuracy, and flips against the reference's predictions (saved, or of `ref`), into `out`;
// returns the predictions JSONL.
std::string measure_mmlu(const EvalRequest& o, const model::Decoder& m, const model::Decoder* ref,
                         const io::Tokenizer& tokenizer, Inputs& in, const fs::path& predictions,
                         const std::string& described, Metrics& out) {
  const c10::Device device = m.device();
  log::info("eval {}: MMLU {} on {} questions of {}", described, in.mmlu_tag, in.items.size(),
            o.mmlu);
  const auto t = Clock::now();
  const auto preds = score_mmlu(m, tokenizer, in.mmlu_data, in.items, in.answers, in.mmlu, "MMLU");
  MmluMetrics& mm = out.mmlu.emplace(mmlu_metrics(preds));
  if (!in.ref_predictions && ref)
    in.ref_predictions =
        score_mmlu(*ref, tokenizer, in.mmlu_data, in.items, in.answers, in.mmlu, "MMLU reference");
  if (in.ref_predictions)
    mm.flips =
        flip_summary(*in.ref_predictions, preds,
                     o.reference_predictions.empty() ? "reference" : o.reference_predictions);
  device_synchronize(device);
  mm.seconds_mmlu = seconds_since(t);
  mm.settings = {in.mmlu_tag,    in.mmlu.limit,        in.mmlu.max_len,      o.mmlu,
                 in.mmlu_sha256, predictions.string(), in.mmlu.shared_prefix};
  if (!in.ppl.shard.whole())
    out.shard_data["mmlu"] =
        mmlu_shard_data(preds, in.ref_predictions ? &*in.ref_predictions : nullptr,
                        o.reference_predictions.empty() ? "reference" : o.reference_predictions,
                        in.mmlu_tag, in.mmlu_subjects);
  return predictions_jsonl(preds, in.mmlu_tag);
}

}  // namespace kldq::eval
