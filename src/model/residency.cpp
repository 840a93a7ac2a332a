// Residency planning: what stays on the device within one memory budget (see the header for the
// order of retreat).
#include "kldq/model/residency.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "kldq/core/error.hpp"

namespace kldq::model {
namespace {

uint64_t sum(const std::vector<uint64_t>& v, size_t begin, size_t end) {
  return std::accumulate(v.begin() + static_cast<std::ptrdiff_t>(begin),
                         v.begin() + static_cast<std::ptrdiff_t>(end), uint64_t{0});
}

// Device bytes with blocks [0, first) streamed and [first, L) resident, caches on the host.
// Streamed blocks run from two device slots of the largest of them (one running, one being
// filled ahead of use).
uint64_t device_bytes(const MemoryNeeds& n, size_t first) {
  const uint64_t slot =
      first == 0 ? 0 : *std::max_element(n.blocks.begin(), n.blocks.begin() + first);
  return n.fixed + n.working + sum(n.blocks, first, n.blocks.size()) + 2 * slot;
}

// "blocks 0-29" / "block 7".
std::string span(size_t begin, size_t end) {
  return end - begin == 1 ? fmt::format("block {}", begin)
                          : fmt::format("blocks {}-{}", begin, end - 1);
}

}  // namespace

std::string gib(uint64_t bytes) {
  if (bytes < (1ULL << 30)) return fmt::format("{:.1f} MiB", double(bytes) / double(1ULL << 20));
  return fmt::format("{:.1f} GiB", double(bytes) / double(1ULL << 30));
}

bool MemoryPlan::any_streamed() const {
  return std::find(streamed.begin(), streamed.end(), true) != streamed.end();
}

std::string MemoryPlan::describe(const MemoryNeeds& needs) const {
  // Streamed blocks are a prefix [0, first).
  const size_t L = streamed.size();
  const size_t first = static_cast<size_t>(std::count(streamed.begin(), streamed.end(), true));
  std::string line = "resident: embed, head";
  if (first < L) line += fmt::format(", {} ({})", span(first, L), gib(sum(needs.blocks, first, L)));
  if (first > 0)
    line +=
        fmt::format("; streamed: {} ({}, host)", span(0, first), gib(sum(needs.blocks, 0, first)));
  if (needs.caches > 0)
    line += fmt::format("; caches: {} ({})", caches_on_host ? "host" : "device", gib(needs.caches));
  if (budget >= kNoBudget) return line + fmt::format("; planned {}", gib(device_bytes));
  return line + fmt::format("; planned {} of {}", gib(device_bytes), gib(budget));
}

MemoryPlan plan_memory(const MemoryNeeds& needs, uint64_t budget, int max_resident,
                       const std::string& lower) {
  const size_t L = needs.blocks.size();
  const size_t cap = max_resident < 0 ? L : std::min(L, static_cast<size_t>(max_resident));
  MemoryPlan plan;
  plan.budget = budget;
  // The fewest blocks streamed: the first index `first` whose plan fits, resident tail capped.
  size_t first = L - cap;
  while (first < L && device_bytes(needs, first) > budget) ++first;
  if (device_bytes(needs, first) > budget) {
    // Everything streamed is not always the minimum (two slots of the largest block may exceed
    // a small model's whole weight): the minimum is over every split.
    uint64_t least = device_bytes(needs, L);
    for (size_t f = 0; f < L; ++f) least = std::min(least, device_bytes(needs, f));
    throw Error(fmt::format(
        "out of GPU memory before loading: the smallest working set needs {} (embed and head {}, "
        "working set {}, largest block {}), the budget is {}; lower {}, or give a larger "
        "--max-gpu-memory",
        gib(least), gib(needs.fixed), gib(needs.working),
        gib(L ? *std::max_element(needs.blocks.begin(), needs.blocks.end()) : 0), gib(budget),
        lower));
  }
  plan.streamed.assign(L, false);
  std::fill(plan.streamed.begin(), plan.streamed.begin() + static_cast<std::ptrdiff_t>(first),
            true);
  plan.device_bytes = device_bytes(needs, first);
  plan.caches_on_host = plan.device_bytes + needs.caches > budget;
  if (!plan.caches_on_host) plan.device_bytes += needs.caches;
  return plan;
}

uint64_t forward_bytes(const ModelConfig& c, int64_t rows, int64_t T, c10::ScalarType dtype) {
  const int64_t per_token = 4 * c.hidden_size + 2 * (c.q_dim() + 2 * c.kv_dim()) + 2 * c.q_dim() +
                            3 * c.intermediate_size;
  const double bytes = double(rows * T * per_token) * double(c10::elementSize(dtype));
  return static_cast<uint64_t>(bytes * 1.25);
}

uint64_t head_bytes(const ModelConfig& c, int64_t chunk, uint64_t per_logit) {
  return static_cast<uint64_t>(chunk * c.vocab_size) * per_logit;
}

}  // namespace kldq::model
