// DecodeGraph: eager first step, one capture, replays (model/decode_graph.hpp).
//
// What the graph holds, fixed at capture:
//   ids   [B, 1] int64   the step's input: step() copies the next tokens here before a replay;
//                        the replay itself ends by writing its logits' argmax here (greedy())
//   col   [1] int64      the column the step writes: the graph itself adds 1 after each step
//   out   [B, V]         the logits the replay writes
// plus every intermediate of the step in the graph's private memory pool. The cache tensors
// (k, v) are written in place at `col`, as the eager step writes them at cache.len.
#include "kldq/model/decode_graph.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kldq/build_config.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace kldq::model {

struct DecodeGraph::Graph {
#if KLDQ_WITH_CUDA_BUILD
  at::cuda::CUDAGraph graph;
#endif
  at::Tensor ids, col, out;
};

DecodeGraph::DecodeGraph(const Decoder& m, Decoder::KvCache& cache, bool enabled)
    : m_(m), cache_(cache), enabled_(enabled && supported(m)) {}

DecodeGraph::~DecodeGraph() {
  try {
    finish();
  } catch (...) {  // a destructor does not throw; a device error surfaces at the next call
  }
}

void DecodeGraph::finish() {
#if KLDQ_WITH_CUDA_BUILD
  if (running_ && m_.device().is_cuda())
    c10::cuda::getCurrentCUDAStream(m_.device().index()).synchronize();
#endif
  running_ = false;
}

bool DecodeGraph::supported(const Decoder& m) {
#if KLDQ_WITH_CUDA_BUILD
  if (!m.device().is_cuda() || m.observer()) return false;
  for (int i = 0; i < m.num_blocks(); ++i)
    if (m.streamed(i)) return false;  // streaming copies on a second stream, host-ordered
  return true;
#else
  (void)m;
  return false;
#endif
}

bool DecodeGraph::captured() const {
  return graph_ != nullptr;
}

at::Tensor DecodeGraph::step(const at::Tensor& next) {
  const int64_t B = static_cast<int64_t>(cache_.pad.size());
  check(next.dim() == 1 && next.size(0) == B, "DecodeGraph::step: next must be [B] token ids");
  if (!enabled_) return eager(next.view({B, 1}));
  // A replay reads the ids from the graph's device input: checked here while on the host.
  m_.check_token_ids(next);
  cache_.check_room(1);
  const at::Tensor ids = next.view({B, 1}).to(m_.device(), at::kLong);  // [B, 1]
#if KLDQ_WITH_CUDA_BUILD
  if (graph_) {
    graph_->ids.copy_(ids);
    return replay();
  }
  // First step: eager, on the stream that then captures, so every lazily created resource
  // (cuBLAS workspaces, attention plans, the RoPE table) exists before the capture.
  const c10::DeviceIndex dev = m_.device().index();
  c10::cuda::device_synchronize();
  at::Tensor logits;
  auto g = std::make_unique<Graph>();
  {
    const c10::cuda::CUDAStreamGuard on(c10::cuda::getStreamFromPool(false, dev));
    logits = eager(ids);
    g->ids = ids.clone();
    g->col = at::full({1}, cache_.len, ids.options());  // the next step's column
    try {
      g->graph.capture_begin();
      g->out = m_.head(m_.cached_step(g->ids, cache_, g->col)).select(1, 0);
      g->col.add_(1);
      // The greedy tokens, into the next replay's input (no copy between replays when greedy()
      // takes them; step() overwrites them with any other choice). One small kernel a step.
      at::Tensor chosen = g->ids.view({B});  // [B] int64, a view of ids
      at::argmax_out(chosen, g->out, -1);
      g->graph.capture_end();
    } catch (const std::exception& e) {
      // The stream leaves capture mode, then one clear error: a half-captured graph leaves the
      // allocator's capture pool in a state only a new process cleans up, so no eager fallback.
      cudaGraph_t partial = nullptr;
      cudaStreamEndCapture(c10::cuda::getCurrentCUDAStream(dev).stream(), &partial);
      if (partial) cudaGraphDestroy(partial);
      (void)cudaGetLastError();
      const auto* c10e = dynamic_cast<const c10::Error*>(&e);
      throw Error(
          fmt::format("capturing the decode step as a CUDA graph failed ({}); kldq generate "
                      "--no-cuda-graph launches the steps one by one",
                      c10e ? c10e->what_without_backtrace() : e.what()));
    }
  }
  c10::cuda::device_synchronize();
  log::debug("decode steps of {} row(s) replay a CUDA graph", B);
  graph_ = std::move(g);
  return logits;
#else
  return eager(ids);  // unreachable: enabled_ is false without CUDA
#endif
}

at::Tensor DecodeGraph::replay() {
#if KLDQ_WITH_CUDA_BUILD
  cache_.check_room(1);
  graph_->graph.replay();
  ++cache_.len;
#endif
  return graph_->out;
}

at::Tensor DecodeGraph::greedy(const at::Tensor& logits, bool more, at::Tensor& next) {
  // A replay's logits have their argmax already in the graph's input (capture, above).
  const bool chosen = graph_ && logits.is_same(graph_->out);
  const at::Tensor ids = chosen ? graph_->ids.view({-1}) : logits.argmax(-1);  // [B], device
#if KLDQ_WITH_CUDA_BUILD
  if (ids.is_cuda()) {
    // Into pinned memory, ordered before the step on the stream: the event completes when the
    // ids are on the host, not when the step is done.
    at::Tensor host = at::empty(ids.sizes(), ids.options().device(at::kCPU).pinned_memory(true));
    host.copy_(ids, /*non_blocking=*/true);
    at::cuda::CUDAEvent copied;
    copied.record(c10::cuda::getCurrentCUDAStream(ids.device().index()));
    // argmax ids are inside the vocabulary: no host check needed
    if (more) next = chosen ? replay() : step(ids);
    copied.synchronize();  // the previous step is done: only the new one may be running
    running_ = more;
    return host;
  }
#endif
  at::Tensor host = ids.to(at::kCPU);  // (the step below then runs after the copy)
  if (more) next = step(host);
  return host;
}

at::Tensor DecodeGraph::eager(const at::Tensor& ids) {
  return m_.head(m_.run_cached(ids, cache_)).select(1, 0);  // [B, V]
}

}  // namespace kldq::model
