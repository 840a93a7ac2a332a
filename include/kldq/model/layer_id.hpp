// LayerId: a decoder linear layer addressed by block and projection, printed and parsed as its
// Hugging Face name (`model.layers.12.mlp.down_proj`), the one name kldq uses everywhere; and
// LayerMap, per-layer values keyed by it in model order.
#pragma once

#include <array>
#include <compare>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace kldq::model {

enum class Proj { Q, K, V, O, GATE, UP, DOWN };

inline constexpr std::array<Proj, 7> kAllProjs = {Proj::Q,    Proj::K,  Proj::V,   Proj::O,
                                                  Proj::GATE, Proj::UP, Proj::DOWN};

// "self_attn.q_proj", "mlp.down_proj", ...: the module path inside a block.
std::string_view proj_path(Proj p);

struct LayerId {
  int block = 0;
  Proj proj = Proj::Q;

  // "model.layers.{block}.{proj_path}"
  std::string name() const;
  // Inverse of name(); nullopt for anything that is not a decoder linear layer name.
  static std::optional<LayerId> parse(std::string_view name);
  // Model order: by block, then q,k,v,o,gate,up,down.
  int order(int num_projs = 7) const { return block * num_projs + static_cast<int>(proj); }
  bool operator==(const LayerId&) const = default;
  // Model order, as order(): block first, then the projection (Proj lists them in model order).
  std::strong_ordering operator<=>(const LayerId&) const = default;
};

// Per-layer values (a layer's states, proxies, quantized form), iterated in model order, the
// order of Decoder::linear_ids(); at/contains/find/insert/operator[] as std::map's. Maps that
// feed an output in name order (JSON objects, the layer formats of a plan) stay keyed by name().
template <class T>
using LayerMap = std::map<LayerId, T>;

}  // namespace kldq::model
