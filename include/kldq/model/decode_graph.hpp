// Decode steps of a KV cache (one new token per row) replayed from a CUDA graph: a step of a
// 28-block model is some 600 small kernels, whose launches, not the weights' bytes, bound the
// speed of batch-1 decoding when each is launched from the host. The first step runs eagerly
// (it also warms up cuBLAS and the attention backend on the capture stream) and is then captured
// once; every later step copies its token ids into the graph's input and replays it.
//
// A replay runs exactly the captured kernels on the same addresses, so its logits equal the
// eager step's bit for bit (tested). Where a graph cannot be used (a CPU decoder, streamed
// blocks, an observer, or `enabled` false) every step runs eagerly through run_cached. A capture
// that fails is an error (kldq::Error) naming `kldq generate --no-cuda-graph`.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "kldq/model/decoder.hpp"

namespace kldq::model {

class DecodeGraph {
 public:
  // Steps of `cache` (B rows) through `m`; both must outlive this object. Meanwhile the cache is
  // extended only through step() and `m` runs nothing else: the graph reads memory `m` owns
  // and may replace when used otherwise (its RoPE table, the packed layers' workspace).
  DecodeGraph(const Decoder& m, Decoder::KvCache& cache, bool enabled = true);
  ~DecodeGraph();  // finish()
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;
  // Whether steps of m can be captured: CUDA, every block resident, no observer.
  static bool supported(const Decoder& m);
  // next: [B] int64 token ids (any device) appended at column cache.len -> the step's logits
  // [B, V] (compute dtype, on the device; valid until the next step). ConfigError when the
  // cache is full.
  at::Tensor step(const at::Tensor& next);
  // Greedy decoding: the tokens of `logits` [B, V] (argmax on their device, the first index on
  // ties, as torch.argmax) as [B] int64 host ids and, when `more`, the step that appends them
  // already started, its logits in `next`. On CUDA the ids' copy to the host is ordered before
  // that step, so the host reads them while the device runs it: consecutive steps follow each
  // other on the device without waiting for the host. Given a replay's own logits, the tokens
  // are the argmax that the replay already wrote into the graph's input, and the next replay
  // starts with no kernel or copy in between.
  at::Tensor greedy(const at::Tensor& logits, bool more, at::Tensor& next);
  // Waits for a step that greedy() started and nobody read (the last row stopped first); the
  // destructor calls it too, so no step runs on the graph's tensors once they are freed.
  void finish();
  // Whether steps replay a captured graph (false until the second step, and when unsupported).
  bool captured() const;

 private:
  struct Graph;  // the CUDA graph and its static tensors (decode_graph.cpp)
  // ids [B, 1] through run_cached -> the step's logits [B, V].
  at::Tensor eager(const at::Tensor& ids);
  // One replay of the captured step on the ids already in its input -> its logits [B, V].
  at::Tensor replay();
  const Decoder& m_;
  Decoder::KvCache& cache_;
  bool enabled_;
  std::unique_ptr<Graph> graph_;
  bool running_ = false;  // greedy() started a step that no later greedy() waited for
};

}  // namespace kldq::model
