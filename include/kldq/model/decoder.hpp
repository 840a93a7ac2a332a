// Decoder: the Qwen2 / Llama / Mistral forward pass in libtorch (pre-norm blocks: RMSNorm,
// GQA attention with rotate-half RoPE through scaled_dot_product_attention, SwiGLU MLP; final
// RMSNorm; tied or separate LM head), numerically as transformers computes it.
//
// The API exposes the pieces (embed, block i, a range of blocks, head) and every linear layer by
// its HF name, because profiling re-runs the tail of the network from cached block inputs and
// quantization swaps individual layers.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <filesystem>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "kldq/model/config.hpp"
#include "kldq/model/layer_id.hpp"
#include "kldq/model/qlinear.hpp"
#include "kldq/model/residency.hpp"

namespace kldq::model {

// Rows packed one after another (no padding): `slot` [N] int64 gives token i's place
// r * width + t among `rows` rows padded to `width`.
struct Packing {
  at::Tensor slot;
  int64_t rows = 0, width = 0;
};

class Decoder {
  struct Block;

 public:
  // Loads config.json and the safetensors weights of `dir` onto `device` in `dtype`. Blocks
  // marked in `streamed` (empty: none) stay in host memory (pinned for CUDA) and are copied to
  // the device when they run (docs/ARCHITECTURE.md, "Residency and streaming").
  static Decoder load(const std::filesystem::path& dir, c10::Device device, c10::ScalarType dtype,
                      const std::vector<bool>& streamed = {});
  // The device bytes load() would take for the checkpoint at `dir` in `dtype`, from its headers
  // (embedding, head and final norm as `fixed`; each block's weights).
  static MemoryNeeds weight_needs(const std::filesystem::path& dir, c10::ScalarType dtype);
  // A decoder sharing every tensor of this one (nothing is copied), with its own stream slots:
  // a model quantized in memory from a reference holds no second copy of the layers it keeps.
  Decoder share() const;

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  using Linears = std::array<QLinear, 7>;  // indexed by Proj

  // ids: [B, T] int64 -> hidden [B, T, H] (compute dtype).
  at::Tensor embed(const at::Tensor& ids) const;
  // ConfigError naming the id when host ids (any shape) fall outside the embedding; ids on the
  // device are not read back (that would sync). embed() runs it.
  void check_token_ids(const at::Tensor& ids) const;
  // Block i on hidden [B, T, H] at positions 0..T-1 -> [B, T, H]. The input is not modified.
  at::Tensor block(int i, const at::Tensor& hidden) const;
  // Blocks [begin, end) in order.
  at::Tensor run_blocks(int begin, int end, at::Tensor hidden) const;
  // Block i's attention on its normed input h [B, T, H] -> o_proj's output [B, T, H], and its MLP
  // on the normed h [B, T, H] -> down_proj's output [B, T, H] (AWQ scores scales on them).
  at::Tensor attention(int i, const at::Tensor& h) const;
  at::Tensor mlp(int i, const at::Tensor& h) const;
  // Final RMSNorm + LM head: hidden [B, T, H] -> logits [B, T, V] (compute dtype); the two
  // halves apart, for callers that normalise once and take logits a chunk of rows at a time.
  at::Tensor head(const at::Tensor& hidden) const;
  at::Tensor final_norm(const at::Tensor& hidden) const;  // [..., H] -> [..., H]
  at::Tensor logits(const at::Tensor& normed) const;      // [..., H] -> [..., V]
  // embed -> all blocks -> head.
  at::Tensor forward(const at::Tensor& ids) const;

  // Keys and values of a batch of B sequences for incremental decoding (decoder_cache.cpp). The
  // batch is left-padded: row b's tokens start at column pad[b] (its position 0); columns
  // [0, len) are filled. Per block k[i], v[i]: [B, kv_heads, capacity, head_dim], compute dtype,
  // on the device.
  struct KvCache {
    std::vector<at::Tensor> k, v;
    std::vector<int64_t> pad;  // [B] leading pad columns per row
    at::Tensor pad_rows;       // the same, [B, 1] int64 on the device
    int64_t len = 0, capacity = 0;
    // The step in progress (set by cached_step): cos/sin [B, T, d] at each row's positions, the
    // additive attention mask [B, 1, T, capacity] (0: attend, -inf: not) in the compute dtype
    // and the columns written, [T] int64.
    // Undefined mask: the step fills columns 0..T-1 of unpadded rows (a first prefill), whose
    // attention is plain causal attention over the step's own tokens.
    at::Tensor cos, sin, mask, cols;
    // ConfigError when `T` more columns do not fit the capacity.
    void check_room(int64_t T) const;
  };
  // An empty cache for pad.size() rows of at most `capacity` columns; ConfigError naming the
  // limit when capacity exceeds max_position_embeddings.
  KvCache new_cache(std::vector<int64_t> pad, int64_t capacity) const;
  // ids [B, T] placed at columns len..len+T-1 -> hidden [B, T, H] after the last block (head()
  // gives logits); the tokens' keys and values are appended. Outputs at pad columns are
  // meaningless (finite). With no padding the logits equal forward()'s up to the attention
  // kernel's summation order.
  at::Tensor run_cached(const at::Tensor& ids, KvCache& cache) const;
  // run_cached's device work for ids [B, T] written at columns `cols` ([T] int64 on the
  // device), without checks or host bookkeeping (cache.len is the caller's): what a CUDA graph
  // of a decode step captures (model/decode_graph.hpp). `fresh`: cols are 0..T-1 and no row is
  // padded (attention without a mask: KvCache::mask).
  at::Tensor cached_step(const at::Tensor& ids, KvCache& cache, const at::Tensor& cols,
                         bool fresh = false) const;
  // ids [B, T] (right-padded) as continuations of `prefix`, a one-row cache without padding
  // whose len tokens every row shares: row b's token t at position prefix.len + t -> hidden
  // [B, T, H]. The prefix is neither copied per row nor extended: each block attends over the
  // prefix's columns and over the row's own causal columns apart, and joins the two softmaxes by
  // their log-sum-exps (decoder_cascade.cpp). Equals run_cached over a copy of the prefix per row
  // up to the attention's summation order; outputs at pad positions are meaningless (finite).
  at::Tensor run_continuations(const at::Tensor& ids, const KvCache& prefix) const;
  // The same with the rows packed one after another, no padding: ids [N] holds row r's
  // lengths[r] tokens after row r - 1's (N = their sum) -> hidden [N, H]. The blocks' products
  // run on the N real tokens only (a right-padded batch of MMLU questions is a quarter padding);
  // each row's own causal attention runs on the rows scattered to a padded [rows, max length].
  at::Tensor run_continuations(const at::Tensor& ids, const std::vector<int64_t>& lengths,
                               const KvCache& prefix) const;

  // Streaming. A streamed block runs from one of two device slots; the next streamed block is
  // copied into the other on a separate CUDA stream while this one computes. The arithmetic is
  // the resident block's: the same kernels on the same tensors' values.
  bool streamed(int block) const;
  // Where block `block`'s weights are kept: the compute device, or the host when streamed.
  c10::Device storage_device(int block) const;
  // `t` moved to where block `block` keeps its weights (pinned host memory when streamed).
  at::Tensor to_storage(int block, const at::Tensor& t) const;
  // The layer as the forward runs it now: the resident layer, or its copy in a device slot
  // (brought in when absent). In-place changes to a streamed copy last until the slot is
  // reused: make them, use them and undo them while working on that one block.
  const QLinear& live_linear(LayerId id) const;
  // Forgets the device copies of streamed blocks (after an error left one changed in place);
  // waits for queued work first.
  void drop_copies();
  // Bytes copied host-to-device for streamed blocks since load.
  uint64_t streamed_bytes() const;
  // Exact bytes of block i's weights (linears and norms).
  uint64_t block_bytes(int i) const;

  // Every decoder linear layer in model order (block, then q,k,v,o,gate,up,down).
  std::vector<LayerId> linear_ids() const;
  const QLinear& linear(LayerId id) const;
  // Replaces one layer (same shape); its block then runs that group unfused.
  void set_linear(LayerId id, QLinear layer);
  // Fuses each block's q/k/v and gate/up again where their layers now agree (QLinear::concat):
  // the members become row views of the fused layer, which decode steps run as one product
  // (packed groups only where the fused kernel takes the rows; larger inputs run the members).
  // Called after a plan's layers are applied; costs one group's copy at a time. The second form
  // fuses block `block` only.
  void fuse_groups();
  void fuse_groups(int block);
  // Replaces one layer's weight by `packed` (any device; moved to the decoder's), keeping its
  // bias; its input scale becomes `input_scale` ([in], any float dtype and device) when that is
  // defined, else stays. Packed layers share the decoder's dequantization workspace.
  void quantize_layer(LayerId id, const formats::PackedWeight& packed,
                      const at::Tensor& input_scale = {});
  // Every block's layers as they are now (sharing their tensors: nothing is copied), to put back
  // with restore(), fused groups included: calibrated quantization changes layers block by block
  // and returns the model as it was.
  class Snapshot {
    friend class Decoder;
    std::vector<Block> blocks_;
  };
  Snapshot snapshot() const;
  void restore(const Snapshot& s);
  // Exact bytes of every weight held (linears, norms, embeddings, untied head).
  uint64_t weight_bytes() const;

  // Called during every forward with the input x of each linear layer (before its input scale),
  // once per layer in model order: q, k and v receive the same tensor ([B, T, H], the normed
  // hidden states), as do gate and up ([B, T, H]); o receives the attention output
  // [B, T, q_dim] and down the SwiGLU activations [B, T, I]. x is the tensor the layer then
  // consumes: an observer must not modify it. Calibration (Hessians, channel statistics) and the
  // profile's proxies use it; unset (the default), it costs one test per layer.
  using Observer = std::function<void(LayerId id, const at::Tensor& x)>;
  const Observer& observer() const { return observer_; }
  // Sets an observer (empty: none) for the guard's lifetime; the previous one comes back when the
  // guard ends, also by an exception. The only way to set one.
  class ScopedObserver {
   public:
    ScopedObserver(Decoder& m, Observer observer) : m_(m), previous_(std::move(m.observer_)) {
      m_.observer_ = std::move(observer);
    }
    ~ScopedObserver() { m_.observer_ = std::move(previous_); }
    ScopedObserver(const ScopedObserver&) = delete;
    ScopedObserver& operator=(const ScopedObserver&) = delete;

   private:
    Decoder& m_;
    Observer previous_;
  };

 private:
  struct Block {
    at::Tensor input_norm;  // [H]
    at::Tensor post_norm;   // [H]
    Linears linears;
    // Fused products over the same input; the separate linears above are row views into these.
    // Undefined once a member of the group was replaced, until fuse_groups().
    QLinear qkv;            // [q_dim + 2 kv_dim, H]
    QLinear gate_up;        // [2 I, H]
    bool streamed = false;  // kept on the host, run from a device slot
    uint64_t version = 0;   // changes whenever a layer is replaced: device slots key on it
  };
  class Streamer;  // the device slots of streamed blocks (decoder_stream.cpp)
  struct RopeTable {
    int64_t len = 0;
    at::Tensor cos, sin;  // [len, head_dim], compute dtype
  };

  Decoder();
  void check_layer(LayerId id) const;
  // Block i as it runs: itself when resident, else its device copy.
  const Block& running(int i) const;
  void changed(Block& b);  // a new version (slots holding the old one are stale)
  const RopeTable& rope(int64_t len) const;
  // run_continuations' shared prefix, the continuation's RoPE rows, cos/sin [T, d], and for
  // packed rows (B = 1, T = N) their layout (packing.slot undefined when the rows are padded
  // already: model/cascade.hpp).
  struct SharedPrefix {
    const KvCache* cache = nullptr;
    at::Tensor cos, sin;
    Packing packing;
  };
  at::Tensor continue_prefix(at::Tensor hidden, const SharedPrefix& shared) const;
  const RopeTable& continuation_rope(const KvCache& prefix, int64_t width) const;
  // The forward's attention and block, optionally appending to and attending over a cache, or
  // continuing a shared prefix.
  at::Tensor attend(int i, const at::Tensor& h, KvCache* cache,
                    const SharedPrefix* shared = nullptr) const;
  at::Tensor run_block(int i, const at::Tensor& hidden, KvCache* cache,
                       const SharedPrefix* shared = nullptr) const;
  // Block i with its MLP's residual add left to the caller: {x, delta}, the block's output
  // being x + delta. A defined `delta` in is the previous block's, which the input norm adds
  // (kernels::add_rms_norm: the add and the norm in one kernel, the same values).
  std::pair<at::Tensor, at::Tensor> block_parts(int i, const at::Tensor& hidden,
                                                const at::Tensor& delta, KvCache* cache,
                                                const SharedPrefix* shared) const;
  // Every block that way: hidden [B, T, H] (not modified) -> the last block's output.
  at::Tensor chain_blocks(const at::Tensor& hidden, KvCache* cache,
                          const SharedPrefix* shared) const;
  void observe(int block, Proj p, const at::Tensor& x) const {
    if (observer_) observer_(LayerId{block, p}, x);
  }

  ModelConfig config_;
  c10::Device device_{c10::kCPU};
  c10::ScalarType dtype_{c10::kFloat};
  at::Tensor embed_;       // [V, H]
  at::Tensor final_norm_;  // [H]
  at::Tensor lm_head_;     // [V, H]; the same tensor as embed_ when tied
  std::vector<Block> blocks_;
  std::shared_ptr<kernels::Workspace> workspace_;  // shared by the packed layers
  mutable RopeTable rope_;  // grown on demand; the decoder is not shared across threads
  Observer observer_;
  std::shared_ptr<Streamer> streamer_;  // copies share it (slots are keyed by block address);
                                        // share() makes a new one
};

}  // namespace kldq::model
