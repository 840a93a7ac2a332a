// `kldq logits MODEL --ids FILE -o OUT.safetensors`: next-token logits of given token ids, for
// checking kldq's forward pass against other implementations (tests and scripts/gpu).
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/core/output.hpp"
#include "kldq/io/json_util.hpp"
#include "kldq/io/safetensors.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::cli {
namespace {

struct LogitsOptions {
  std::string model;
  std::string ids;
  std::string out;
  model::ComputeOptions compute;
};

// Reads a JSON array of equal-length arrays of token ids -> int64 [B, T].
at::Tensor read_ids(const std::string& path, int64_t vocab) {
  const auto j = io::read_json_file(path, /*config=*/true);
  if (!j.is_array() || j.empty() || !j[0].is_array() || j[0].empty())
    throw ConfigError(fmt::format("{}: expected a non-empty JSON array of token-id arrays", path));
  const int64_t B = static_cast<int64_t>(j.size()), T = static_cast<int64_t>(j[0].size());
  at::Tensor ids = at::empty({B, T}, at::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    if (!j[b].is_array() || static_cast<int64_t>(j[b].size()) != T)
      throw ConfigError(fmt::format("{}: [{}]: every row needs {} token ids", path, b, T));
    for (int64_t t = 0; t < T; ++t) {
      const auto& v = j[b][t];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
        throw ConfigError(
            fmt::format("{}: [{}][{}]: expected a token id in [0, {})", path, b, t, vocab));
      acc[b][t] = v.get<int64_t>();
    }
  }
  return ids;
}

int run_logits(const LogitsOptions& o) {
  const std::filesystem::path out = file_output(o.out, "-o", {o.model, o.ids});
  const RunContext ctx = model::context_from(o.compute);
  const model::Decoder dec = model::Decoder::load(o.model, ctx.device, ctx.dtype);
  const at::Tensor ids = read_ids(o.ids, dec.config().vocab_size);
  at::InferenceMode guard;
  at::Tensor logits = dec.forward(ids).to(at::kFloat).cpu();  // [B, T, V] fp32
  io::write_safetensors(out, {{"logits", logits}, {"ids", ids}},
                        {{"model", o.model}, {"dtype", dtype_name(ctx.dtype)}});
  log::info("wrote logits [{}] to {}", fmt::join(logits.sizes(), ", "), o.out);
  return 0;
}

}  // namespace

void register_logits(CLI::App& app, Action& action) {
  auto opts = std::make_shared<LogitsOptions>();
  auto* sub = app.add_subcommand("logits", "dump the logits of token ids (for parity checks)");
  sub->add_option("MODEL", opts->model, "checkpoint directory")->required();
  sub->add_option("--ids", opts->ids, "JSON file: array of equal-length token-id arrays")
      ->required();
  sub->add_option("-o,--output", opts->out, "output safetensors file (logits fp32 [B, T, V])")
      ->required();
  add_compute_options(*sub, opts->compute);
  sub->callback([&action, opts] { action = [opts] { return run_logits(*opts); }; });
}

}  // namespace kldq::cli
