// LayerId <-> Hugging Face layer names.
#include "kldq/model/layer_id.hpp"

#include <charconv>

#include <fmt/format.h>

namespace kldq::model {

std::string_view proj_path(Proj p) {
  switch (p) {
    case Proj::Q:
      return "self_attn.q_proj";
    case Proj::K:
      return "self_attn.k_proj";
    case Proj::V:
      return "self_attn.v_proj";
    case Proj::O:
      return "self_attn.o_proj";
    case Proj::GATE:
      return "mlp.gate_proj";
    case Proj::UP:
      return "mlp.up_proj";
    case Proj::DOWN:
      return "mlp.down_proj";
  }
  return "";
}

std::string LayerId::name() const {
  return fmt::format("model.layers.{}.{}", block, proj_path(proj));
}

std::optional<LayerId> LayerId::parse(std::string_view name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  int block = -1;
  auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), block);
  if (ec != std::errc() || block < 0 || end == name.data() || *end != '.') return std::nullopt;
  if (name.front() == '0' && end - name.data() > 1) return std::nullopt;  // no "07"
  const std::string_view rest(end + 1, name.data() + name.size() - (end + 1));
  for (Proj p : kAllProjs)
    if (rest == proj_path(p)) return LayerId{block, p};
  return std::nullopt;
}

}  // namespace kldq::model
