// Planners over sensitivity profiles: reading and cross-checking profiles, the restore-top,
// budget, uniform and random strategies, and the plan's recorded prediction.
#include "kldq/plan/planner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "kldq/build_config.hpp"
#include "kldq/core/context.hpp"
#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"
#include "kldq/io/document.hpp"
#include "kldq/model/layer_id.hpp"
#include "kldq/profile/record.hpp"
#include "kldq/quant/quantizer.hpp"

namespace kldq::plan {
namespace {

using nlohmann::json;

// A candidate format for every unit: a profiled base (cost and bytes from its profile) or bf16
// (cost 0: the unit as the reference has it).
struct Candidate {
  formats::FormatSpec spec;
  const Profile* profile = nullptr;
  double cost(size_t u) const { return profile ? profile->cost(u) : 0.0; }
  uint64_t bytes(const Profile& anchor, size_t u) const {
    return profile ? profile->units[u].bytes_base : anchor.units[u].bytes_bf16;
  }
};

// Profiles after the first must describe the same units of the same model and calibration.
void check_compatible(const std::vector<Profile>& ps) {
  if (ps.empty()) throw ConfigError("plan: no profile given");
  const Profile& a = ps.front();
  std::set<std::string> bases;
  for (const Profile& p : ps) {
    if (!bases.insert(p.base).second)
      throw ConfigError(fmt::format("{}: a second profile with base {}", p.path, p.base));
    auto differs = [&](const char* what, const std::string& x, const std::string& y) {
      if (x != y)
        throw ConfigError(
            fmt::format("{}: {} {} differs from {}'s {}; profiles must come from "
                        "one model, calibration, method, mode and granularity",
                        p.path, what, y, a.path, x));
    };
    differs("model fingerprint", a.fingerprint, p.fingerprint);
    auto shown = [](const std::optional<calib::CalibrationIdentity>& c) {
      return c ? calib::to_json(*c).dump() : std::string("null");
    };
    differs("calibration", shown(a.calibration), shown(p.calibration));
    differs("method", quant::method_name(a.method), quant::method_name(p.method));
    // Profiles of kldq before method_settings were recorded lack them; the rest must agree.
    if (!a.method_settings.is_null() && !p.method_settings.is_null())
      differs("method settings", a.method_settings.dump(), p.method_settings.dump());
    differs("mode", profile::mode_name(a.mode), profile::mode_name(p.mode));
    differs("granularity", profile::granularity_name(a.granularity),
            profile::granularity_name(p.granularity));
    if (p.units.size() != a.units.size())
      throw ConfigError(
          fmt::format("{}: {} units, {} has {}", p.path, p.units.size(), a.path, a.units.size()));
    for (size_t u = 0; u < a.units.size(); ++u) differs("unit", a.units[u].id, p.units[u].id);
  }
}

// Unit order for restore-top (most sensitive first; model order among equals) or random.
std::vector<size_t> ranking(const Profile& p, const Request& r) {
  std::vector<size_t> order(p.units.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (r.strategy == Strategy::RANDOM) {
    // Fisher-Yates with mt19937_64, whose output sequence the standard fixes (std::shuffle's
    // use of it is not), so a seed names the same plan everywhere.
    std::mt19937_64 gen(r.seed);
    for (size_t i = order.size(); i > 1; --i) {
      const uint64_t bound = i, limit = UINT64_MAX - UINT64_MAX % bound;
      uint64_t x;
      do x = gen();
      while (x >= limit);  // rejection keeps the draw uniform
      std::swap(order[i - 1], order[static_cast<size_t>(x % bound)]);
    }
  } else {
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return p.cost(a) > p.cost(b); });
  }
  return order;
}

// The first P % of `order` by count, or the units of `order` that fit, in turn, in P % of the
// parameters (a unit that would overflow is skipped and the next one tried).
std::vector<bool> take_percent(const Profile& p, const std::vector<size_t>& order,
                               const Request& r) {
  std::vector<bool> take(p.units.size(), false);
  if (r.by == By::COUNT) {
    const auto k = static_cast<size_t>(std::llround(r.percent / 100.0 * double(order.size())));
    for (size_t i = 0; i < k; ++i) take[order[i]] = true;
    return take;
  }
  uint64_t total = 0;
  for (const auto& u : p.units) total += u.params;
  const double allowed = r.percent / 100.0 * double(total);
  uint64_t used = 0;
  for (size_t i : order)
    if (double(used + p.units[i].params) <= allowed) used += p.units[i].params, take[i] = true;
  return take;
}

const char* strategy_name(Strategy s) {
  return kStrategies.name(s);
}

std::vector<Candidate> candidates_for(const std::vector<Profile>& ps, const Request& r) {
  std::vector<Candidate> out;
  auto add = [&](const std::string& name, const std::string& what) {
    const auto spec = formats::FormatSpec::parse(name, what);
    if (spec.format == formats::Format::BF16) return out.push_back({spec, nullptr});
    for (const Profile& p : ps)
      if (formats::FormatSpec::parse(p.base).name() == spec.name())
        return out.push_back({spec, &p});
    throw ConfigError(
        fmt::format("{} {}: no profile with base {} was given; run kldq profile "
                    "--base {} with the same calibration first",
                    what, name, spec.name(), spec.name()));
  };
  if (r.strategy != Strategy::BUDGET || r.candidates.empty()) {
    for (const Profile& p : ps) add(p.base, "profile base");
    add("bf16", "bf16");
  } else {
    for (const auto& c : r.candidates) add(c, "--candidates");
  }
  return out;
}

// Units decided together (indices into p.units, in model order): with `fused`, the q/k/v and the
// gate/up layers of each block of a linear-granularity profile, the groups vLLM fuses into one
// module and which therefore must share a format; every other unit alone.
std::vector<std::vector<size_t>> decision_groups(const Profile& p, bool fused) {
  std::vector<std::vector<size_t>> groups;
  std::map<std::pair<int, int>, size_t> open;  // (block, 0 attention / 1 mlp) -> group
  for (size_t u = 0; u < p.units.size(); ++u) {
    const auto id = model::LayerId::parse(p.units[u].id);
    const bool qkv = id && (id->proj == model::Proj::Q || id->proj == model::Proj::K ||
                            id->proj == model::Proj::V);
    const bool gate_up = id && (id->proj == model::Proj::GATE || id->proj == model::Proj::UP);
    if (!fused || p.granularity != profile::Granularity::LINEAR || (!qkv && !gate_up)) {
      groups.push_back({u});
      continue;
    }
    const auto [it, fresh] = open.emplace(std::pair{id->block, qkv ? 0 : 1}, groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].push_back(u);
  }
  return groups;
}

// `p` with one unit per group: summed parameters, bytes and costs (the additive model the
// planners use throughout), stored so that Profile::cost returns the summed cost.
Profile grouped(const Profile& p, const std::vector<std::vector<size_t>>& groups) {
  Profile g = p;
  g.units.clear();
  for (const auto& members : groups) {
    Profile::Unit unit;
    unit.id = p.units[members.front()].id;
    double cost = 0;
    for (size_t u : members) {
      unit.params += p.units[u].params;
      unit.bytes_base += p.units[u].bytes_base;
      unit.bytes_bf16 += p.units[u].bytes_bf16;
      cost += p.cost(u);
    }
    unit.kl_mean = p.mode == profile::Mode::RESTORE_ONE ? p.baseline_kl - cost : cost;
    g.units.push_back(unit);
  }
  return g;
}

// The chosen candidate per unit of `ps`: an index into `cands` (cands[0] is the anchor base
// unless the budget's --candidates say otherwise; the restoring strategies use {base, bf16}).
std::vector<size_t> select(const std::vector<Profile>& ps, const Request& r,
                           const std::vector<Candidate>& cands) {
  const Profile& anchor = ps.front();
  const size_t n = anchor.units.size();
  uint64_t params = 0;
  for (const auto& u : anchor.units) params += u.params;
  std::vector<size_t> pick(n, 0);
  if (r.strategy == Strategy::RESTORE_TOP || r.strategy == Strategy::RANDOM) {
    const std::vector<bool> take = take_percent(anchor, ranking(anchor, r), r);
    for (size_t u = 0; u < n; ++u) pick[u] = take[u] ? cands.size() - 1 : 0;
  } else if (r.strategy == Strategy::BUDGET) {
    std::vector<std::vector<double>> cost(n);
    std::vector<std::vector<uint64_t>> bytes(n);
    uint64_t lo = 0, hi = 0;
    for (size_t u = 0; u < n; ++u) {
      for (const Candidate& c : cands) {
        cost[u].push_back(c.cost(u));
        bytes[u].push_back(c.bytes(anchor, u));
      }
      lo += *std::min_element(bytes[u].begin(), bytes[u].end());
      hi += *std::max_element(bytes[u].begin(), bytes[u].end());
    }
    const double lo_bpw = 8.0 * double(lo) / double(params),
                 hi_bpw = 8.0 * double(hi) / double(params);
    // A budget given as the bits per weight of another plan must admit that plan's exact bytes:
    // the relative slack absorbs the decimal rounding of the printed figure.
    const double cap = r.budget_bpw * double(params) / 8.0 * (1 + 1e-12);
    if (!(r.budget_bpw > 0) || cap < double(lo) || r.budget_bpw > hi_bpw * (1 + 1e-12))
      throw ConfigError(
          fmt::format("--budget-bpw {}: out of range; the candidates give {:.4f} to "
                      "{:.4f} bits per weight",
                      r.budget_bpw, lo_bpw, hi_bpw));
    pick = solve_knapsack(cost, bytes, static_cast<uint64_t>(cap));
    check(pick.size() == n, "plan: knapsack found no selection within a feasible budget");
  }
  return pick;
}

}  // namespace

double Profile::cost(size_t u) const {
  // A unit measured below zero (restore-one noise: restoring it changed KL by less than the
  // measurement's spread) counts as harmless, so predictions stay valid KLs.
  return std::max(
      0.0, mode == profile::Mode::RESTORE_ONE ? baseline_kl - units[u].kl_mean : units[u].kl_mean);
}

Profile Profile::from_json(const json& j, const std::string& path) {
  const io::Doc d(j, path, io::DocKind::CONFIG);
  d.require_object();
  if (d.contains("shard"))
    d["shard"].fail(fmt::format(
        "a shard of a profile (shard: {}); merge the shards first (kldq profile --merge)",
        j["shard"].dump()));
  profile::ProfileRecord r = profile::profile_from_json(d);
  Profile p;
  p.path = path;
  p.mode = r.mode, p.granularity = r.granularity, p.base = r.base, p.method = r.method;
  p.model = r.model ? *r.model : d["model"].str();  // an error: missing or not a string
  if (!r.model_fingerprint)
    throw ConfigError(
        fmt::format("{}: model_fingerprint: missing (a profile of an older kldq; "
                    "profile the model again)",
                    path));
  p.fingerprint = *r.model_fingerprint;
  (void)d["calibration"];  // recorded, if only as null (a profile written by hand)
  p.calibration = r.calibration;
  p.method_settings = r.method_settings;
  // A plan carries the calibration a gptq/awq profile fitted on (fitted_settings).
  if (!p.method_settings.is_null() && quant::needs_calibration(p.method) && !p.calibration)
    d["calibration"].require_object();
  p.baseline_kl = r.baseline_kl;
  if (r.units.empty()) d["units"].fail("expected a non-empty list");
  p.units = std::move(r.units);
  return p;
}

double parse_percent(const std::string& s, const std::string& what) {
  const std::string body = !s.empty() && s.back() == '%' ? s.substr(0, s.size() - 1) : s;
  const std::optional<double> v = parse_number(body);
  if (!v || *v < 0 || *v > 100)
    throw ConfigError(fmt::format("{} {}: expected a percentage from 0 to 100", what, s));
  return *v;
}

By parse_by(const std::string& s, const std::string& what) {
  return kBys.parse(s, what);
}

namespace {

// The chosen candidate per unit, decided per group of units planned together.
std::vector<size_t> pick_per_unit(const std::vector<Profile>& ps, const Request& r) {
  const std::vector<std::vector<size_t>> groups = decision_groups(ps.front(), r.fused_groups);
  std::vector<size_t> pick(ps.front().units.size(), 0);
  std::vector<Profile> gps;
  for (const Profile& p : ps) gps.push_back(r.fused_groups ? grouped(p, groups) : p);
  const std::vector<size_t> chosen = select(gps, r, candidates_for(gps, r));
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t u : groups[g]) pick[u] = chosen[g];
  return pick;
}

// The plan's base: the profile's base when restoring; for a budget, the candidate holding the
// most parameters (the fewest overrides).
size_t base_candidate(const Profile& anchor, const std::vector<size_t>& pick, const Request& r) {
  if (r.strategy != Strategy::BUDGET) return 0;
  std::map<size_t, uint64_t> held;
  for (size_t u = 0; u < pick.size(); ++u) held[pick[u]] += anchor.units[u].params;
  size_t base = pick[0];
  for (const auto& [c, p] : held)
    if (p > held[base]) base = c;
  return base;
}

// The settings the profile's layers were fitted with, and for gptq/awq the windows they were
// fitted on (the profile's calibration): quantize --plan re-fits those layers.
json fitted_settings(const Profile& anchor) {
  json settings = anchor.method_settings;
  if (!settings.is_null() && quant::needs_calibration(anchor.method))
    settings["calibration"] = calib::to_json(anchor.calibration.value());  // checked on reading
  if (settings.is_null() && quant::needs_calibration(anchor.method))
    log::warn(
        "{}: records no method_settings (an older kldq): quantize --plan will fit {} with "
        "the command line's settings and calibration",
        anchor.path, quant::method_name(anchor.method));
  return settings;
}

// plan.planner: the request, the profiles' identity, and what the plan predicts and weighs.
quant::PlannerRecord planner_record(const std::vector<Profile>& ps, const Request& r,
                                    double predicted, uint64_t params, uint64_t bytes) {
  const Profile& anchor = ps.front();
  quant::PlannerRecord planner;
  planner.strategy = strategy_name(r.strategy);
  planner.profiles.emplace();
  for (const Profile& p : ps) planner.profiles->push_back(p.path);
  planner.model = anchor.model;
  planner.model_fingerprint = anchor.fingerprint;
  planner.calibration = anchor.calibration;
  planner.mode = profile::mode_name(anchor.mode);
  planner.granularity = profile::granularity_name(anchor.granularity);
  planner.anchor_base = anchor.base;
  planner.anchor_baseline_kl = anchor.baseline_kl;
  planner.predicted_kl = predicted;
  planner.params = params;
  planner.weight_bytes = bytes;
  planner.bits_per_weight = 8.0 * double(bytes) / double(params);
  planner.kldq_version = KLDQ_VERSION_STRING;
  if (r.strategy == Strategy::RESTORE_TOP || r.strategy == Strategy::RANDOM)
    planner.percent = r.percent, planner.by = kBys.name(r.by);
  if (r.strategy == Strategy::RANDOM) planner.seed = r.seed;
  if (r.strategy == Strategy::BUDGET) planner.budget_bpw = r.budget_bpw;
  if (r.fused_groups) planner.fused_groups = true;
  return planner;
}

}  // namespace

quant::Plan make_plan(const std::vector<Profile>& ps, const Request& r) {
  check_compatible(ps);
  const Profile& anchor = ps.front();
  if (r.strategy != Strategy::BUDGET && ps.size() > 1)
    throw ConfigError(
        fmt::format("plan: {} takes one profile, {} given", strategy_name(r.strategy), ps.size()));
  if (r.strategy == Strategy::BUDGET && ps.size() > 1 && anchor.mode != profile::Mode::QUANTIZE_ONE)
    throw ConfigError(
        "--budget-bpw: several profiles must be quantize-one profiles (restore-one KL gains of "
        "different bases are measured from different baselines and do not add up)");
  const std::vector<Candidate> cands = candidates_for(ps, r);
  const size_t n = anchor.units.size();
  uint64_t params = 0;
  for (const auto& u : anchor.units) params += u.params;

  const std::vector<size_t> pick = pick_per_unit(ps, r);
  const size_t base = base_candidate(anchor, pick, r);
  quant::Plan plan;
  plan.method = anchor.method;
  plan.base = cands[base].spec;
  plan.method_settings = fitted_settings(anchor);
  uint64_t bytes = 0;
  double chosen = 0, anchored = 0;  // the units' summed costs: as planned, all at the anchor base
  std::map<std::string, std::string> formats;
  for (size_t u = 0; u < n; ++u) {
    const Candidate& c = cands[pick[u]];
    bytes += c.bytes(anchor, u);
    chosen += c.cost(u);
    anchored += anchor.cost(u);
    formats[anchor.units[u].id] = c.spec.name();
    if (pick[u] == base) continue;
    // Half-block and block units name every linear below them.
    const std::string pattern = anchor.granularity == profile::Granularity::LINEAR
                                    ? anchor.units[u].id
                                    : anchor.units[u].id + ".*";
    plan.overrides.push_back({quant::LayerSelector(pattern, "plan"), c.spec});
  }
  // The measured baseline scaled by the plan's share of the summed unit costs: >= 0, the
  // baseline at the anchor's uniform plan, 0 with every unit restored, monotone in what is
  // restored. Unit KLs are not additive (they sum to more than the whole model's KL when units
  // interact sub-additively), so the plain additive model, baseline - sum of restored costs,
  // went below zero; the share keeps the same ranking (the knapsack minimises the same sum).
  // (Every unit measured harmless, anchored = 0: the uniform plan still predicts the baseline.)
  const double predicted = anchored > 0         ? anchor.baseline_kl * chosen / anchored
                           : chosen == anchored ? anchor.baseline_kl
                                                : chosen;
  plan.planner = planner_record(ps, r, predicted, params, bytes);
  plan.planner->unit_formats = std::move(formats);
  return plan;
}

}  // namespace kldq::plan
