// LayerId <-> Hugging Face layer names.
#include "kldq/model/layer_id.hpp"
#include "support/catch.hpp"

using kldq::model::LayerId;
using kldq::model::Proj;

TEST_CASE("layer ids print and parse as HF names", "[model]") {
  CHECK(LayerId{12, Proj::DOWN}.name() == "model.layers.12.mlp.down_proj");
  CHECK(LayerId{0, Proj::Q}.name() == "model.layers.0.self_attn.q_proj");
  for (int b : {0, 7, 27})
    for (Proj p : kldq::model::kAllProjs)
      CHECK(LayerId::parse(LayerId{b, p}.name()) == LayerId{b, p});
  CHECK_FALSE(LayerId::parse("model.layers.3.mlp.down_proj.weight"));
  CHECK_FALSE(LayerId::parse("model.layers.x.mlp.down_proj"));
  CHECK_FALSE(LayerId::parse("model.layers.03.mlp.down_proj"));
  CHECK_FALSE(LayerId::parse("model.layers.-1.mlp.down_proj"));
  CHECK_FALSE(LayerId::parse("lm_head"));
  CHECK(LayerId{1, Proj::Q}.order() == 7);
}
