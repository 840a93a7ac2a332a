// Multiple-choice knapsack by dynamic programming over a quantized capacity, for the
// bits-per-weight budget planner: items are profile units, options their candidate formats.
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "kldq/core/error.hpp"
#include "kldq/plan/planner.hpp"

namespace kldq::plan {
namespace {

// At most this many capacity steps: the table of choices is items x steps bytes (a 14B model's
// 336 linear units: 88 MB) and the solve items x options x steps operations (under a second).
constexpr uint64_t kMaxSteps = uint64_t{1} << 18;

uint64_t ceil_div(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

std::vector<size_t> solve_knapsack(const std::vector<std::vector<double>>& cost,
                                   const std::vector<std::vector<uint64_t>>& weight,
                                   uint64_t capacity) {
  const size_t n = cost.size();
  check(weight.size() == n, "solve_knapsack: cost and weight differ in size");
  // Every item takes at least its lightest option; the DP distributes the spare capacity.
  std::vector<uint64_t> lightest(n);
  uint64_t floor_weight = 0;
  for (size_t i = 0; i < n; ++i) {
    check(!cost[i].empty() && cost[i].size() == weight[i].size(), "solve_knapsack: bad item");
    lightest[i] = *std::min_element(weight[i].begin(), weight[i].end());
    floor_weight += lightest[i];
  }
  if (floor_weight > capacity) return {};
  const uint64_t spare = capacity - floor_weight;
  // The quantum: the gcd of all extra weights keeps the solve exact; when that still leaves too
  // many steps, extra weights are rounded up to a coarser quantum, which keeps every solution
  // feasible and loses at most one quantum per item of the spare capacity.
  uint64_t g = 0;
  for (size_t i = 0; i < n; ++i)
    for (uint64_t w : weight[i]) g = std::gcd(g, w - lightest[i]);
  uint64_t quantum = std::max<uint64_t>(g, 1);
  if (spare / quantum > kMaxSteps) quantum = ceil_div(spare, kMaxSteps);
  const size_t steps = static_cast<size_t>(spare / quantum) + 1;

  // best[c]: least cost of the items so far with extra weight at most c quanta.
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> best(steps, 0.0), next(steps);
  std::vector<uint8_t> choice(n * steps);  // [item][c] the option taken
  for (size_t i = 0; i < n; ++i) {
    check(cost[i].size() < 256, "solve_knapsack: too many options");
    std::fill(next.begin(), next.end(), kInf);
    for (size_t k = 0; k < cost[i].size(); ++k) {
      const uint64_t w = ceil_div(weight[i][k] - lightest[i], quantum);
      if (w >= steps) continue;
      for (size_t c = w; c < steps; ++c) {
        const double v = best[c - w] + cost[i][k];
        if (v < next[c]) next[c] = v, choice[i * steps + c] = static_cast<uint8_t>(k);
      }
    }
    best.swap(next);
  }
  std::vector<size_t> out(n);
  size_t c = steps - 1;
  for (size_t i = n; i-- > 0;) {
    out[i] = choice[i * steps + c];
    c -= static_cast<size_t>(ceil_div(weight[i][out[i]] - lightest[i], quantum));
  }
  return out;
}

}  // namespace kldq::plan
