// Decoder construction from a checkpoint (fused q/k/v and gate/up buffers, tied embeddings),
// layer access and replacement by LayerId, and weight accounting.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <functional>
#include <numeric>

#include "group_rows.hpp"
#include "kldq/core/error.hpp"
#include "kldq/io/checkpoint.hpp"
#include "kldq/model/decoder.hpp"
#include "kldq/model/foreign.hpp"
#include "kldq/model/layout.hpp"
#include "kldq/model/quantized.hpp"
#include "kldq/model/weight_store.hpp"

namespace kldq::model {
namespace {

std::string lname(int block, Proj p) {
  return LayerId{block, p}.name();
}

// Loads the projections `projs` of one block into a single [sum(out), in] buffer, so the block
// runs one GEMM for them; each projection's QLinear is a row slice (a view) of that buffer, so
// fusing costs no memory. Biases, when `with_bias`, are fused the same way.
QLinear load_fused(WeightStore& ws, int block, std::initializer_list<Proj> projs,
                   std::initializer_list<int64_t> outs, int64_t in, bool with_bias,
                   Decoder::Linears& linears) {
  const int64_t total = std::accumulate(outs.begin(), outs.end(), int64_t{0});
  auto opts = at::TensorOptions().dtype(ws.dtype()).device(ws.device()).pinned_memory(ws.pinned());
  at::Tensor w = at::empty({total, in}, opts);  // [sum(out), in]
  at::Tensor b = with_bias ? at::empty({total}, opts) : at::Tensor();
  int64_t row = 0;
  auto out_it = outs.begin();
  for (Proj p : projs) {
    const int64_t out = *out_it++;
    at::Tensor wp = w.narrow(0, row, out);
    ws.take_into(lname(block, p) + ".weight", wp);
    at::Tensor bp;
    if (with_bias) {
      bp = b.narrow(0, row, out);
      ws.take_into(lname(block, p) + ".bias", bp);
    }
    linears[static_cast<int>(p)] = QLinear(wp, bp);
    row += out;
  }
  return QLinear(w, b);
}

// One layer: a dense `.weight`, or the stored tensors of its format (kept packed on the device).
QLinear load_linear(WeightStore& ws, const LayerFormats& formats, int block, Proj p, int64_t out,
                    int64_t in, bool with_bias,
                    const std::shared_ptr<kernels::Workspace>& workspace) {
  const std::string base = lname(block, p);
  at::Tensor b = with_bias ? ws.take(base + ".bias", {out}) : at::Tensor();
  const auto f = formats.find(base);
  if (f == formats.end()) return QLinear(ws.take(base + ".weight", {out, in}), b);
  std::vector<at::Tensor> parts;
  for (const auto& part : formats::packed_layout(f->second, out, in))
    parts.push_back(ws.take_part(base + "." + part.suffix, part.shape, part.dtype));
  const auto packed = formats::PackedWeight::from_parts(f->second, out, in, parts);
  packed.check_values(fmt::format("{}: layer '{}'", ws.dir(), base));
  QLinear q(packed, b, ws.dtype(), workspace);
  if (ws.has(base + ".input_scale")) q.set_input_scale(ws.take(base + ".input_scale", {in}));
  return q;
}

// Concatenates a group's members (when they agree) into `fused`, stored by `store`, and makes
// them row views of it. False when already fused or the members do not agree.
bool fuse(Decoder::Linears& linears, QLinear& fused, std::initializer_list<Proj> projs,
          const std::function<at::Tensor(const at::Tensor&)>& store) {
  if (fused.defined()) return false;
  std::vector<const QLinear*> members;
  for (Proj p : projs) members.push_back(&linears[static_cast<int>(p)]);
  std::optional<QLinear> joined = QLinear::concat(members);
  if (!joined) return false;
  fused = joined->map(store);
  view_members(fused, projs, linears, linears);
  return true;
}

// Loads a group of projections sharing one input: fused into one GEMM when all are dense (packed
// groups are fused afterwards, by fuse_groups).
void load_group(WeightStore& ws, const LayerFormats& formats, int block,
                std::initializer_list<Proj> projs, std::initializer_list<int64_t> outs, int64_t in,
                bool with_bias, Decoder::Linears& linears, QLinear& fused,
                const std::shared_ptr<kernels::Workspace>& workspace) {
  const bool dense = std::none_of(projs.begin(), projs.end(),
                                  [&](Proj p) { return formats.count(lname(block, p)) != 0; });
  if (dense) {
    fused = load_fused(ws, block, projs, outs, in, with_bias, linears);
    return;
  }
  auto out_it = outs.begin();
  for (Proj p : projs)
    linears[static_cast<int>(p)] =
        load_linear(ws, formats, block, p, *out_it++, in, with_bias, workspace);
}

}  // namespace

Decoder Decoder::load(const std::filesystem::path& dir, c10::Device device, c10::ScalarType dtype,
                      const std::vector<bool>& streamed) {
  Decoder d;
  d.config_ = load_config(dir / "config.json");
  d.device_ = device;
  d.dtype_ = dtype;
  const ModelConfig& c = d.config_;
  const io::Checkpoint ck = open_checkpoint(dir);
  WeightStore ws(ck, device, dtype);
  const LayerFormats formats = read_layer_formats(ck, c);
  ws.validate(expected_tensors(c, formats, read_input_scaled(ck, formats)));
  d.workspace_ = std::make_shared<kernels::Workspace>();
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  d.embed_ = ws.take("model.embed_tokens.weight", {V, H});
  if (!streamed.empty() && streamed.size() != static_cast<size_t>(c.num_layers))
    throw InternalError("Decoder::load: residency of another model");
  for (int i = 0; i < c.num_layers; ++i) {
    Block b;
    b.streamed = !streamed.empty() && streamed[static_cast<size_t>(i)];
    // Streamed blocks are kept on the host; pinned when the device is a GPU (asynchronous copies).
    ws.set_target(b.streamed ? c10::Device(c10::kCPU) : device, b.streamed && device.is_cuda());
    d.changed(b);
    const std::string prefix = fmt::format("model.layers.{}.", i);
    b.input_norm = ws.take(prefix + "input_layernorm.weight", {H});
    b.post_norm = ws.take(prefix + "post_attention_layernorm.weight", {H});
    load_group(ws, formats, i, {Proj::Q, Proj::K, Proj::V}, {c.q_dim(), c.kv_dim(), c.kv_dim()}, H,
               c.attention_bias, b.linears, b.qkv, d.workspace_);
    b.linears[static_cast<int>(Proj::O)] =
        load_linear(ws, formats, i, Proj::O, H, c.q_dim(), c.o_bias, d.workspace_);
    load_group(ws, formats, i, {Proj::GATE, Proj::UP}, {I, I}, H, c.mlp_bias, b.linears, b.gate_up,
               d.workspace_);
    b.linears[static_cast<int>(Proj::DOWN)] =
        load_linear(ws, formats, i, Proj::DOWN, H, I, c.mlp_bias, d.workspace_);
    d.blocks_.push_back(std::move(b));
  }
  ws.set_target(device, false);
  d.fuse_groups();
  d.final_norm_ = ws.take("model.norm.weight", {H});
  d.lm_head_ = c.tie_word_embeddings ? d.embed_ : ws.take("lm_head.weight", {V, H});
  ws.accept_derived(c);
  ws.finish();
  return d;
}

MemoryNeeds Decoder::weight_needs(const std::filesystem::path& dir, c10::ScalarType dtype) {
  const ModelConfig c = load_config(dir / "config.json");
  const io::Checkpoint ck = open_checkpoint(dir);
  const LayerFormats formats = read_layer_formats(ck, c);
  MemoryNeeds n;
  n.blocks.assign(static_cast<size_t>(c.num_layers), 0);
  // As load() holds them: packed parts as stored, every other tensor in the compute dtype.
  for (const TensorSlot& t : expected_tensors(c, formats, read_input_scaled(ck, formats))) {
    const uint64_t bytes = static_cast<uint64_t>(std::accumulate(t.shape.begin(), t.shape.end(),
                                                                 int64_t{1}, std::multiplies<>())) *
                           at::elementSize(t.dtype.value_or(dtype));
    const bool in_block = t.name.starts_with("model.layers.");
    if (in_block)
      n.blocks[static_cast<size_t>(std::stoi(t.name.substr(13)))] += bytes;
    else
      n.fixed += bytes;
  }
  return n;
}

void Decoder::check_layer(LayerId id) const {
  if (id.block < 0 || id.block >= num_blocks())
    throw ConfigError(fmt::format("layer '{}': the model has {} blocks", id.name(), num_blocks()));
}

std::vector<LayerId> Decoder::linear_ids() const {
  return model::linear_ids(config_);
}

const QLinear& Decoder::linear(LayerId id) const {
  check_layer(id);
  return blocks_[static_cast<size_t>(id.block)].linears[static_cast<int>(id.proj)];
}

void Decoder::set_linear(LayerId id, QLinear layer) {
  check_layer(id);
  Block& b = blocks_[static_cast<size_t>(id.block)];
  QLinear& slot = b.linears[static_cast<int>(id.proj)];
  if (layer.in_features() != slot.in_features() || layer.out_features() != slot.out_features() ||
      layer.has_bias() != slot.has_bias())
    throw InternalError(fmt::format("layer '{}': replacement has a different shape", id.name()));
  // The group's other members keep viewing the fused buffer, so its memory stays referenced.
  const bool attn = id.proj == Proj::Q || id.proj == Proj::K || id.proj == Proj::V;
  const bool gate_up = id.proj == Proj::GATE || id.proj == Proj::UP;
  if (attn) b.qkv = QLinear();
  if (gate_up) b.gate_up = QLinear();
  slot = std::move(layer);
  changed(b);
}

void Decoder::fuse_groups() {
  for (int i = 0; i < num_blocks(); ++i) fuse_groups(i);
}

void Decoder::fuse_groups(int block) {
  check_layer({block, Proj::Q});
  Block& b = blocks_[static_cast<size_t>(block)];
  auto store = [&](const at::Tensor& t) { return to_storage(block, t); };
  const bool attn = fuse(b.linears, b.qkv, {Proj::Q, Proj::K, Proj::V}, store);
  const bool mlp = fuse(b.linears, b.gate_up, {Proj::GATE, Proj::UP}, store);
  if (attn || mlp) changed(b);
}

void Decoder::quantize_layer(LayerId id, const formats::PackedWeight& packed,
                             const at::Tensor& input_scale) {
  const QLinear& old = linear(id);
  if (packed.out != old.out_features() || packed.in != old.in_features())
    throw InternalError(fmt::format("layer '{}': packed weight has a different shape", id.name()));
  // Copy the bias: a fused group's bias is a view into a buffer that may be released.
  auto store = [&](const at::Tensor& t) { return to_storage(id.block, t); };
  const at::Tensor bias = old.has_bias() ? store(old.bias().clone()) : at::Tensor();
  QLinear q(packed.map(store), bias, dtype_, workspace_);
  if (input_scale.defined())
    q.set_input_scale(store(input_scale.to(dtype_)));
  else if (old.input_scale().defined())
    q.set_input_scale(old.input_scale());
  set_linear(id, std::move(q));
}

Decoder::Snapshot Decoder::snapshot() const {
  Snapshot s;
  s.blocks_ = blocks_;
  return s;
}

void Decoder::restore(const Snapshot& s) {
  check(s.blocks_.size() == blocks_.size(), "Decoder::restore: snapshot of another model");
  blocks_ = s.blocks_;
  for (Block& b : blocks_) changed(b);
}

uint64_t Decoder::block_bytes(int i) const {
  const Block& b = blocks_.at(static_cast<size_t>(i));
  uint64_t n = b.input_norm.nbytes() + b.post_norm.nbytes();
  // A fused group's members are row views of it, sharing its input scale: the group counts once.
  auto group = [&](const QLinear& fused, std::initializer_list<Proj> projs) {
    if (fused.defined()) return n += fused.bytes();
    for (Proj p : projs) n += b.linears[static_cast<int>(p)].bytes();
    return n;
  };
  group(b.qkv, {Proj::Q, Proj::K, Proj::V});
  group(b.gate_up, {Proj::GATE, Proj::UP});
  for (Proj p : {Proj::O, Proj::DOWN}) n += b.linears[static_cast<int>(p)].bytes();
  return n;
}

uint64_t Decoder::weight_bytes() const {
  uint64_t n = embed_.nbytes() + final_norm_.nbytes();
  if (!lm_head_.is_same(embed_)) n += lm_head_.nbytes();
  for (int i = 0; i < num_blocks(); ++i) n += block_bytes(i);
  return n;
}

}  // namespace kldq::model
