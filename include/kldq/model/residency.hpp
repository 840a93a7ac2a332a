// Residency: which of a command's GPU bytes stay on the device and which live in host memory
// (docs/ARCHITECTURE.md, "Residency and streaming"). One budget covers weights, caches and the
// working set; the decision is made before any weight is loaded, from the checkpoint's headers.
//
// Order of retreat when the budget is short: optional caches (cached block inputs) move to the
// host first, since they cost one small copy per use; then decoder blocks stream, the earliest
// first, since later blocks run more often (every profile unit runs the tail of the network).
// Embeddings, the LM head and the working set always stay on the device.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kldq/model/config.hpp"

namespace kldq::model {

// What a command needs on the device, in bytes.
struct MemoryNeeds {
  uint64_t fixed = 0;            // always resident: embedding, LM head, final norm
  std::vector<uint64_t> blocks;  // each decoder block's weights (and states kept beside them)
  uint64_t working = 0;          // activations, states, workspaces and a safety margin
  uint64_t caches = 0;           // caches that may live in host memory instead
};

inline constexpr uint64_t kNoBudget = UINT64_MAX / 4;  // the CPU: host memory is not planned

struct MemoryPlan {
  std::vector<bool> streamed;   // per block: weights in host memory, copied in when they run
  bool caches_on_host = false;  // the `caches` of MemoryNeeds
  uint64_t device_bytes = 0;    // the planned device bytes (weights, caches, working set)
  uint64_t budget = 0;
  bool any_streamed() const;
  // "resident: embed, head, blocks 30-47 (13.9 GiB); streamed: blocks 0-29 (15.6 GiB, host);
  // caches: host; planned 21.3 of 22.0 GiB".
  std::string describe(const MemoryNeeds& needs) const;
};

// The plan that keeps the most on the device within `budget`. `max_resident` (>= 0) caps the
// resident blocks (--resident-blocks; tests force streaming with it). ResourceError (exit 1)
// when even every block streamed and the caches on the host do not fit, naming the minimum and
// `lower` (the options that lower the need, "--batch, --seq-len").
MemoryPlan plan_memory(const MemoryNeeds& needs, uint64_t budget, int max_resident,
                       const std::string& lower);

// Estimates for working sets. Device bytes alive at the peak of one block's forward on `rows`
// sequences of T tokens (hidden states, q/k/v, attention output, the MLP's gate/up/activation),
// a quarter more for the allocator's rounding and kernel workspaces.
uint64_t forward_bytes(const ModelConfig& c, int64_t rows, int64_t T, c10::ScalarType dtype);
// The LM head's scoring of `chunk` positions at `per_logit` bytes per logit: two models' logits
// read by the fused KL kernel (2 x the dtype's size), or one model's logits and their fp32
// log-softmax (the dtype's size + 8).
uint64_t head_bytes(const ModelConfig& c, int64_t chunk, uint64_t per_logit);

// "13.9 GiB".
std::string gib(uint64_t bytes);

}  // namespace kldq::model
