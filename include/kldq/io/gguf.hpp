// GGUF (llama.cpp's model file, version 3; github.com/ggml-org/ggml docs/gguf.md) writing.
//
//   [u32 magic "GGUF"][u32 version 3][u64 tensor count][u64 metadata count]
//   metadata:  [string key][u32 value type][value]            strings: [u64 length][bytes]
//   tensors:   [string name][u32 n_dims][u64 ne[0..n)][u32 ggml type][u64 offset]
//   padding to general.alignment (32), then each tensor's bytes at its offset (aligned)
//
// ne[0] is the innermost (contiguous) dimension: an [out, in] weight has ne = {in, out}.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace kldq::io {

// ggml tensor types kldq writes, with their block layouts (ggml-common.h):
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,     // 32 weights: fp16 d, 16 bytes; x = (q - 8)·d
  Q4_1 = 3,     // 32 weights: fp16 d, fp16 m, 16 bytes; x = q·d + m
  Q8_0 = 8,     // 32 weights: fp16 d, 32 int8; x = q·d
  IQ4_NL = 20,  // 32 weights: fp16 d, 16 bytes; x = d·kvalues[q] (a fixed 16-entry table)
  BF16 = 30,
};
// Nibble order of Q4_0, Q4_1 and IQ4_NL (4-bit codes q0..q31 of one block):
//   byte j (0..15) = q(j) | q(j + 16) << 4       (the first half in the low nibbles)
const char* ggml_type_name(GgmlType t);
// Bytes of a row of `n` weights (n a multiple of the type's block for quantized types).
uint64_t ggml_row_bytes(GgmlType t, int64_t n);

class GgufWriter {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_f32s(const std::string& key, const std::vector<float>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);
  // A tensor of shape `shape` (outermost first, as torch), its bytes made by `bytes` when written
  // (uint8, exactly ggml_row_bytes(type, shape.back()) · rows).
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& shape,
                  std::function<at::Tensor()> bytes);
  // Writes the file atomically (a temporary beside `path`, renamed when complete).
  void write(const std::filesystem::path& path) const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> shape;
    uint64_t bytes;
    std::function<at::Tensor()> make;
  };
  std::string kv_;  // serialised metadata pairs
  uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace kldq::io
