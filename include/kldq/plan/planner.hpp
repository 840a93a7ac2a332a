// Mixed-precision planners (docs/PROTOCOLS.md, "Plans"): turn one or more
// sensitivity profiles (profile.json of `kldq profile`) into a quant::Plan, by restoring the most
// sensitive units, by a bits-per-weight budget over several candidate formats (a multiple-choice
// knapsack solved by dynamic programming), or as the uniform and random baselines.
//
// Every plan records what it predicts: the anchor profile's measured KL of the fully quantized
// model, moved by the single-unit measurements of every unit whose format differs from it
// (an additive model of interactions; `kldq eval --plan` reports it beside the measured KL).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kldq/core/vocabulary.hpp"
#include "kldq/profile/profile.hpp"
#include "kldq/profile/record.hpp"
#include "kldq/quant/plan.hpp"

namespace kldq::plan {

// One profile.json as a plan needs it: its record (profile::ProfileRecord) read and checked.
struct Profile {
  using Unit = profile::UnitRecord;  // the record the profile writes
  std::string path, model, fingerprint, base;
  profile::Mode mode = profile::Mode::QUANTIZE_ONE;
  profile::Granularity granularity = profile::Granularity::LINEAR;
  quant::Method method = quant::Method::RTN;
  std::optional<calib::CalibrationIdentity> calibration;  // none: not recorded (rtn only)
  nlohmann::json method_settings;  // quant::method_json of the profile's method; null if absent
  double baseline_kl = 0;
  std::vector<Unit> units;

  // A unit's sensitivity, the KL its base format costs: KL with it quantized alone
  // (quantize-one), or the KL its restoration alone removes (restore-one: baseline - KL).
  double cost(size_t unit) const;
  // ConfigError naming `path` and the key for a missing or ill-typed key (profile_from_json), a
  // shard, a profile without units, model, fingerprint or (gptq, awq) calibration.
  static Profile from_json(const nlohmann::json& j, const std::string& path);
};

enum class Strategy { RESTORE_TOP, BUDGET, UNIFORM, RANDOM };
inline constexpr Vocabulary<Strategy, 4> kStrategies{"planner",
                                                     {{{Strategy::RESTORE_TOP, "restore-top"},
                                                       {Strategy::BUDGET, "budget"},
                                                       {Strategy::UNIFORM, "uniform"},
                                                       {Strategy::RANDOM, "random"}}}};
enum class By { COUNT, PARAMS };
inline constexpr Vocabulary<By, 2> kBys{"basis", {{{By::COUNT, "count"}, {By::PARAMS, "params"}}}};

struct Request {
  Strategy strategy = Strategy::UNIFORM;
  double percent = 0;                   // restore-top, random: 0..100
  By by = By::COUNT;                    // restore-top, random
  double budget_bpw = 0;                // budget: average bits per weight of the linear layers
  std::vector<std::string> candidates;  // budget: formats (empty: every profiled base + bf16)
  uint64_t seed = 0;                    // random
  // Decide the q/k/v and the gate/up layers of each block together (one format each group, as
  // vLLM's fused modules need); the group's cost, bytes and parameters are its members' sums.
  bool fused_groups = false;
};

// Parses "20%" or "20" into 20; ConfigError naming `what` outside 0..100.
double parse_percent(const std::string& text, const std::string& what);
By parse_by(const std::string& text, const std::string& what);

// The plan for `profiles`; the first is the anchor (its base and baseline). Several profiles must
// come from the same model, calibration, mode and granularity with distinct bases (budget only).
// plan.planner records the strategy, the profiles' identity, bits_per_weight, weight_bytes and
// predicted_kl. ConfigError for inconsistent profiles or an impossible request.
quant::Plan make_plan(const std::vector<Profile>& profiles, const Request& request);

// The profiles `kldq plan` reads: each file's JSON, checked (Profile::from_json).
std::vector<Profile> read_profiles(const std::vector<std::string>& paths);
// The line `kldq plan` prints on stderr about `plan`, made from `profiles`, written to `out`.
std::string plan_line(const quant::Plan& plan, const std::vector<Profile>& profiles,
                      const std::string& out);

// Multiple-choice knapsack: one option per item, minimising the summed cost with the summed
// weight at most `capacity`. cost/weight: [items][options]. Optimal up to rounding each weight
// up to a multiple of a quantum (exact, the gcd of the weight differences, when the spare
// capacity spans at most 2^18 of them; see the definition).
// Empty when no selection fits.
std::vector<size_t> solve_knapsack(const std::vector<std::vector<double>>& cost,
                                   const std::vector<std::vector<uint64_t>>& weight,
                                   uint64_t capacity);

}  // namespace kldq::plan
