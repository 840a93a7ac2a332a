// The decoder with a key/value cache: a left-padded batch prefilled and then extended a few
// tokens at a time, each step attending over every cached column (generation, decode speed).
//
// Layout of one block's cache, row b (pad[b] = 2, len = 5, capacity = 8):
//
//   column    0    1    2    3    4    5    6    7
//   token    pad  pad  t0   t1   t2   --   --   --      (t0 at position 0, t2 at position 2)
//
// A query at column c attends to key columns k with pad[b] <= k <= c. Pad columns attend to
// themselves only, so their (unused) outputs stay finite. Every step attends over all
// `capacity` columns (the unfilled ones masked and zeroed, so no NaN of uninitialised memory
// reaches P.V): the attention's shapes stay fixed from step to step, so backends that plan per
// shape (cuDNN's SDPA on Hopper) plan once rather than once per generated token. The exception
// is a first prefill of unpadded rows, which attends over its own T columns only (run_cached).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include "kldq/core/error.hpp"
#include "kldq/kernels/fused.hpp"
#include "kldq/model/decoder.hpp"

namespace kldq::model {

Decoder::KvCache Decoder::new_cache(std::vector<int64_t> pad, int64_t capacity) const {
  if (capacity > config_.max_position_embeddings)
    throw ConfigError(
        fmt::format("a cache of {} positions exceeds the model's context of {} "
                    "(max_position_embeddings)",
                    capacity, config_.max_position_embeddings));
  check(!pad.empty() && capacity > 0, "new_cache: no rows or no capacity");
  for (int64_t p : pad) check(p >= 0 && p < capacity, "new_cache: pad outside the capacity");
  KvCache c;
  const int64_t B = static_cast<int64_t>(pad.size());
  const auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  for (int i = 0; i < num_blocks(); ++i) {
    c.k.push_back(at::zeros({B, config_.num_kv_heads, capacity, config_.head_dim}, opts));
    c.v.push_back(at::zeros({B, config_.num_kv_heads, capacity, config_.head_dim}, opts));
  }
  c.pad_rows = at::tensor(pad, at::kLong).to(device_).view({B, 1});  // [B, 1]
  c.pad = std::move(pad);
  c.capacity = capacity;
  return c;
}

void Decoder::KvCache::check_room(int64_t T) const {
  if (len + T > capacity)
    throw ConfigError(
        fmt::format("{} tokens exceed the cache's capacity of {}", len + T, capacity));
}

at::Tensor Decoder::run_cached(const at::Tensor& ids, KvCache& cache) const {
  check(ids.dim() == 2 && ids.size(0) == static_cast<int64_t>(cache.pad.size()) && ids.size(1) > 0,
        "run_cached: ids must be [B, T] with the cache's B");
  check(cache.pad_rows.defined() && cache.pad_rows.size(0) == ids.size(0),
        "run_cached: a cache made by new_cache");
  const int64_t T = ids.size(1), len = cache.len;
  cache.check_room(T);
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(device_);
  // A first prefill of unpadded rows sees only its own tokens, causally: no mask, and on CUDA
  // flash attention, whose cost does not depend on having seen the prompt length before (cuDNN's
  // SDPA plans every new shape: MMLU's 57 prefixes, each its own length, took 4.5-6.2 s on an
  // H100 through SDPA, decoder.cpp).
  const bool fresh =
      len == 0 && std::all_of(cache.pad.begin(), cache.pad.end(), [](int64_t p) { return p == 0; });
  at::Tensor hidden = cached_step(ids, cache, at::arange(len, len + T, i64), fresh);
  cache.len = len + T;
  return hidden;
}

at::Tensor Decoder::cached_step(const at::Tensor& ids, KvCache& cache, const at::Tensor& cols,
                                bool fresh) const {
  // Device work only (no host copy, no sync), so a CUDA graph can capture it (decode_graph.cpp).
  const int64_t B = ids.size(0), K = cache.capacity;
  // RoPE rows at each row's positions (column - pad, clamped at 0 on pad columns), gathered from
  // the same fp32-computed table the uncached forward uses (so position p rotates identically),
  // and the additive mask [B, 1, T, K] (what SDPA makes of a boolean mask), once per step rather
  // than converted by SDPA in every block: kernels::step_inputs says which keys each column sees.
  const RopeTable& r = rope(K);  // built once for the cache's span
  kernels::StepInputs in =
      kernels::step_inputs(cols, cache.pad_rows.view({B}), r.cos, r.sin, K, !fresh);
  cache.cos = std::move(in.cos);
  cache.sin = std::move(in.sin);
  if (!fresh) cache.mask = std::move(in.mask);
  cache.cols = cols;

  at::Tensor hidden = chain_blocks(embed(ids), &cache, nullptr);
  cache.cos = cache.sin = cache.mask = cache.cols = at::Tensor();
  return hidden;
}

}  // namespace kldq::model
