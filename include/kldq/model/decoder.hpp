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
#include <vector>

#include "kldq/model/config.hpp"
#include "kldq/model/layer_id.hpp"
#include "kldq/model/qlinear.hpp"

namespace kldq::model {

class Decoder {
  struct Block;

 public:
  // Loads config.json and the safetensors weights of `dir` onto `device` in `dtype`.
  static Decoder load(const std::filesystem::path& dir, c10::Device device, c10::ScalarType dtype);

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  using Linears = std::array<QLinear, 7>;  // indexed by Proj

  // ids: [B, T] int64 -> hidden [B, T, H] (compute dtype).
  at::Tensor embed(const at::Tensor& ids) const;
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

  // Every decoder linear layer in model order (block, then q,k,v,o,gate,up,down).
  std::vector<LayerId> linear_ids() const;
  const QLinear& linear(LayerId id) const;
  // Replaces one layer (same shape); its block then runs that group unfused.
  void set_linear(LayerId id, QLinear layer);
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
  void set_observer(Observer observer) { observer_ = std::move(observer); }
  const Observer& observer() const { return observer_; }

 private:
  struct Block {
    at::Tensor input_norm;  // [H]
    at::Tensor post_norm;   // [H]
    Linears linears;
    // Fused GEMMs over the same input; the separate linears above are views into these.
    // Undefined once a member of the group was replaced.
    QLinear qkv;      // [q_dim + 2 kv_dim, H]
    QLinear gate_up;  // [2 I, H]
  };
  struct RopeTable {
    int64_t len = 0;
    at::Tensor cos, sin;  // [len, head_dim], compute dtype
  };

  Decoder() = default;
  void check_layer(LayerId id) const;
  const RopeTable& rope(int64_t len) const;
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
};

}  // namespace kldq::model
