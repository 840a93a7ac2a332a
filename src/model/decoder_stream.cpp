// Streamed blocks: weights kept in host memory and run from two device slots. While block i
// computes on the current stream, the next streamed block is copied into the other slot on a
// side stream (pinned memory, asynchronous); the current stream waits for that copy's event
// before using it. On a CPU "device" (tests) the copy is a synchronous clone: the same logic,
// checkable without a GPU.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <atomic>
#include <optional>

#include "group_rows.hpp"
#include "kldq/build_config.hpp"
#include "kldq/core/device.hpp"
#include "kldq/core/error.hpp"
#include "kldq/model/decoder.hpp"

#if KLDQ_WITH_CUDA_BUILD
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace kldq::model {
namespace {

uint64_t next_version() {
  static std::atomic<uint64_t> counter{0};
  return ++counter;
}

}  // namespace

class Decoder::Streamer {
 public:
  // The device copy of `master`, copied in now if no slot holds it, after any copy in flight.
  const Block& get(const Block& master, c10::Device device) {
    Slot& s = find(master) ? *find(master) : fill(master, device);
    wait(s, device);
    recent_ = &s;
    return s.copy;
  }
  // Starts copying `master` into the slot not used most recently, unless a slot holds it.
  void prefetch(const Block& master, c10::Device device) {
    if (!find(master)) fill(master, device);
  }
  uint64_t bytes = 0;  // host-to-device bytes copied

 private:
  struct Slot {
    const Block* master = nullptr;
    uint64_t version = 0;
    Block copy;
#if KLDQ_WITH_CUDA_BUILD
    std::optional<at::cuda::CUDAEvent> ready;  // recorded on the side stream after the copy
#endif
  };

  Slot* find(const Block& master) {
    for (Slot& s : slots_)
      if (s.master == &master && s.version == master.version) return &s;
    return nullptr;
  }

  Slot& fill(const Block& master, c10::Device device) {
    Slot& s = recent_ == &slots_[0] ? slots_[1] : slots_[0];
    s.master = nullptr;
#if KLDQ_WITH_CUDA_BUILD
    if (device.is_cuda()) {
      // Work already queued on the current stream may still read the slot's old copy: the side
      // stream waits for it, then frees the old copy and allocates and fills the new one. The
      // allocator ties those buffers to the side stream, so they are reused only behind it.
      const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device.index());
      if (!side_) side_ = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
      at::cuda::CUDAEvent queued;
      queued.record(current);
      queued.block(*side_);
      c10::cuda::CUDAStreamGuard guard(*side_);
      s.copy = Block();
      s.copy = copy_block(master, [&](const at::Tensor& t) {
        if (t.device().is_cuda()) return t;  // already on the device (a replaced layer)
        bytes += t.nbytes();
        return t.to(device, /*non_blocking=*/true);
      });
      s.ready.emplace();
      s.ready->record(*side_);
    } else
#endif
    {
      s.copy = copy_block(master, [&](const at::Tensor& t) {
        bytes += t.nbytes();
        return t.to(device, /*non_blocking=*/false, /*copy=*/true);
      });
    }
    s.master = &master;
    s.version = master.version;
    return s;
  }

  void wait(Slot& s, c10::Device device) {
#if KLDQ_WITH_CUDA_BUILD
    if (device.is_cuda() && s.ready)
      s.ready->block(c10::cuda::getCurrentCUDAStream(device.index()));
#endif
    (void)s, (void)device;
  }

  // A block with `f` applied to every tensor; the members of a fused group become row views of
  // the fused copy again, so the copy runs the same fused GEMMs as the master.
  template <class F>
  static Block copy_block(const Block& m, F&& f) {
    Block c;
    c.input_norm = f(m.input_norm);
    c.post_norm = f(m.post_norm);
    auto fuse = [&](const QLinear& fused, QLinear& out, std::initializer_list<Proj> projs) {
      if (!fused.defined()) {
        for (Proj p : projs) c.linears[static_cast<int>(p)] = m.linears[static_cast<int>(p)].map(f);
        return;
      }
      out = fused.map(f);
      view_members(out, projs, m.linears, c.linears);
    };
    fuse(m.qkv, c.qkv, {Proj::Q, Proj::K, Proj::V});
    fuse(m.gate_up, c.gate_up, {Proj::GATE, Proj::UP});
    for (Proj p : {Proj::O, Proj::DOWN})
      c.linears[static_cast<int>(p)] = m.linears[static_cast<int>(p)].map(f);
    return c;
  }

  Slot slots_[2];
  Slot* recent_ = nullptr;
#if KLDQ_WITH_CUDA_BUILD
  std::optional<c10::cuda::CUDAStream> side_;
#endif
};

Decoder::Decoder() : streamer_(std::make_shared<Streamer>()) {}

Decoder Decoder::share() const {
  Decoder d = *this;
  d.streamer_ = std::make_shared<Streamer>();
  return d;
}

void Decoder::changed(Block& b) {
  b.version = next_version();
}

bool Decoder::streamed(int block) const {
  check(block >= 0 && block < num_blocks(), "Decoder::streamed: block out of range");
  return blocks_[static_cast<size_t>(block)].streamed;
}

c10::Device Decoder::storage_device(int block) const {
  return streamed(block) ? c10::Device(c10::kCPU) : device_;
}

at::Tensor Decoder::to_storage(int block, const at::Tensor& t) const {
  if (!streamed(block)) return t.to(device_);
  // Pinned memory lets the slot copies run asynchronously; a CPU "device" needs none.
  return device_.is_cuda() ? t.to(c10::kCPU).pin_memory() : t.to(c10::kCPU);
}

const Decoder::Block& Decoder::running(int i) const {
  const Block& b = blocks_[static_cast<size_t>(i)];
  if (!b.streamed) return b;
  const Block& copy = streamer_->get(b, device_);
  // Ahead of use: the next block, when it streams too, while this one computes.
  if (i + 1 < num_blocks() && blocks_[static_cast<size_t>(i + 1)].streamed)
    streamer_->prefetch(blocks_[static_cast<size_t>(i + 1)], device_);
  return copy;
}

const QLinear& Decoder::live_linear(LayerId id) const {
  check_layer(id);
  return running(id.block).linears[static_cast<int>(id.proj)];
}

void Decoder::drop_copies() {
  // Freed slot memory returns to the side stream's pool; nothing may still read it.
  device_synchronize(device_);
  const uint64_t bytes = streamer_->bytes;
  streamer_ = std::make_shared<Streamer>();
  streamer_->bytes = bytes;
}

uint64_t Decoder::streamed_bytes() const {
  return streamer_->bytes;
}

}  // namespace kldq::model
