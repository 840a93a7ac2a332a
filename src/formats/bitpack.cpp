// Bit packing of integer codes (int2/int3/int4 and friends), LSB-first per row:
//
//   row codes c0 c1 c2 ... (b bits each)      byte 0         byte 1
//   b = 4:                                   [c1 c1 c1 c1 c0 c0 c0 c0] [c3 .. c2 ..]
//   b = 3:  bits  0- 2 c0, 3- 5 c1, 6- 8 c2 (c2 straddles bytes 0 and 1), ...
//            byte 0 = [c2.1 c2.0 c1.2 c1.1 c1.0 c0.2 c0.1 c0.0], byte 1 = [.. c3 .. c2.2]
//   b = 2:  four codes per byte, c0 in bits 0-1
// Each row starts on a byte boundary (rows are padded with zero bits). pack_bits runs on any
// device; unpack_bits is the CPU reference.
#include <ATen/ATen.h>

#include "kldq/core/error.hpp"
#include "kldq/formats/packed.hpp"

namespace kldq::formats {

// Vectorised over tensors so it runs on the codes' device: each code is split into its b bits,
// the row's bits are laid end to end (code j's bit k at position j*b + k), padded to whole bytes,
// and every 8 consecutive bits are summed with weights 1, 2, 4, ..., 128 into one byte.
at::Tensor pack_bits(const at::Tensor& codes, int bits) {
  check(codes.dim() == 2 && codes.scalar_type() == at::kByte,
        "pack_bits: codes must be uint8 [r, n]");
  check(bits >= 1 && bits <= 8, "pack_bits: 1..8 bits");
  const int64_t rows = codes.size(0), n = codes.size(1), row_bytes = (n * bits + 7) / 8;
  const auto u8 = codes.options();
  const at::Tensor shifts = at::arange(bits, u8);  // [b]
  const at::Tensor bitmap = codes.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and_(1);
  at::Tensor stream = at::zeros({rows, row_bytes * 8}, u8);               // [r, bytes * 8]
  stream.narrow(1, 0, n * bits).copy_(bitmap.reshape({rows, n * bits}));  // [r, n, b] -> [r, n*b]
  const at::Tensor weights = at::pow(2, at::arange(8, u8.dtype(at::kInt))).to(at::kByte);
  return (stream.view({rows, row_bytes, 8}) * weights).sum(-1, false, at::kByte);
}

at::Tensor unpack_bits(const at::Tensor& packed, int bits, int64_t n) {
  check(packed.dim() == 2 && packed.scalar_type() == at::kByte, "unpack_bits: uint8 [r, bytes]");
  const at::Tensor p = packed.contiguous();
  const int64_t rows = p.size(0), row_bytes = p.size(1);
  check(row_bytes == (n * bits + 7) / 8, "unpack_bits: row length does not match n");
  at::Tensor out = at::empty({rows, n}, at::kByte);
  const uint8_t* src = p.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const unsigned mask = (1u << bits) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = src + r * row_bytes;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t bit = j * bits;
      unsigned v = row[bit / 8] >> (bit % 8);
      if (bit % 8 + bits > 8) v |= static_cast<unsigned>(row[bit / 8 + 1]) << (8 - bit % 8);
      dst[r * n + j] = static_cast<uint8_t>(v & mask);
    }
  }
  return out;
}

}  // namespace kldq::formats
