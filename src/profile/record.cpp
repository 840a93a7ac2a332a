// profile.json's unit record: writing, and reading back with checks in the document reader.
#include "kldq/profile/record.hpp"

#include <fmt/format.h>

#include "kldq/model/layer_id.hpp"

namespace kldq::profile {
namespace {

// A non-negative count (params, bytes).
uint64_t count(const io::Doc& d) {
  const nlohmann::json& v = d.json();
  if (!(v.is_number_integer() || v.is_number_unsigned()) || v.get<int64_t>() < 0)
    d.fail(fmt::format("expected a count, got {}", d.shown()));
  return v.get<uint64_t>();
}

}  // namespace

nlohmann::json to_json(const UnitRecord& u) {
  return {{"id", u.id},
          {"params", u.params},
          {"bytes_base", u.bytes_base},
          {"bytes_bf16", u.bytes_bf16},
          {"kl_mean", u.kl_mean},
          {"kl_stderr", u.kl_stderr},
          {"top1_agree", u.top1_agree}};
}

UnitRecord unit_from_json(const io::Doc& d, Granularity granularity) {
  UnitRecord u{d["id"].str(),
               count(d["params"]),
               count(d["bytes_base"]),
               count(d["bytes_bf16"]),
               d["kl_mean"].finite(),
               d["kl_stderr"].finite(),
               d.has("top1_agree") ? d["top1_agree"].finite() : 0.0};
  if (u.params == 0) d["params"].fail("expected > 0");
  if (!valid_unit_id(u.id, granularity))
    d["id"].fail(fmt::format("'{}' is not a {} unit name (model.layers.N{})", u.id,
                             granularity_name(granularity),
                             granularity == Granularity::LINEAR       ? ".mlp.up_proj, ..."
                             : granularity == Granularity::HALF_BLOCK ? ".self_attn or .mlp"
                                                                      : ""));
  return u;
}

bool valid_unit_id(const std::string& id, Granularity granularity) {
  if (granularity == Granularity::LINEAR) {
    const auto l = model::LayerId::parse(id);
    return l && l->name() == id;
  }
  constexpr std::string_view kPrefix = "model.layers.";
  if (!id.starts_with(kPrefix)) return false;
  const std::string rest = id.substr(kPrefix.size());
  const size_t digits = rest.find_first_not_of("0123456789");
  const std::string block = rest.substr(0, digits),
                    tail = digits == std::string::npos ? std::string() : rest.substr(digits);
  if (block.empty() || block.size() > 6 || (block.size() > 1 && block[0] == '0')) return false;
  if (granularity == Granularity::BLOCK) return tail.empty();
  return granularity == Granularity::HALF_BLOCK && (tail == ".self_attn" || tail == ".mlp");
}

}  // namespace kldq::profile
