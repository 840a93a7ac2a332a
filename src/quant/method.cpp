// The methods' traits table (quant/method.hpp).
#include "kldq/quant/method.hpp"

#include <array>

namespace kldq::quant {
namespace {

// In enum order (checked below), so a method's row is the table at its value.
constexpr std::array<MethodTraits, 4> kTraits = {{
    {Method::RTN, /*calibrated=*/false, /*float_zeros=*/false},
    {Method::HQQ, false, true},
    {Method::GPTQ, true, false},
    {Method::AWQ, true, false},
}};

constexpr bool in_enum_order() {
  for (size_t i = 0; i < kTraits.size(); ++i)
    if (static_cast<size_t>(kTraits[i].method) != i) return false;
  return true;
}
static_assert(in_enum_order(), "kTraits: one row per Method, in enum order");

}  // namespace

const MethodTraits& method_traits(Method m) {
  return kTraits.at(static_cast<size_t>(m));
}

void to_json(nlohmann::json& j, Method m) {
  j = method_name(m);
}

}  // namespace kldq::quant
