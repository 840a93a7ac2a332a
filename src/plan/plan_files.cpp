// The profile files a plan is made from, and the line that describes a plan (plan/planner.hpp).
#include <fmt/format.h>

#include "kldq/io/json_util.hpp"
#include "kldq/plan/planner.hpp"

namespace kldq::plan {

std::vector<Profile> read_profiles(const std::vector<std::string>& paths) {
  std::vector<Profile> profiles;
  for (const auto& p : paths)
    profiles.push_back(Profile::from_json(io::read_json_file(p, true), p));
  return profiles;
}

std::string plan_line(const quant::Plan& plan, const std::vector<Profile>& profiles,
                      const std::string& out) {
  const quant::PlannerRecord& p = plan.planner.value();  // make_plan's, complete
  return fmt::format(
      "plan ({}): base {}, {} of {} units overridden; {:.4f} bits per weight; predicted KL "
      "{:.6f} (all {}: {:.6f}){}\n",
      p.strategy, plan.base.name(), plan.overrides.size(), profiles.front().units.size(),
      p.bits_per_weight.value(), p.predicted_kl.value(), profiles.front().base,
      profiles.front().baseline_kl, out.empty() ? "" : " -> " + out);
}

}  // namespace kldq::plan
