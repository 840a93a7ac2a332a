// Packed weights: the stored tensors of one [out, in] weight in a format, round-to-nearest (RTN)
// quantization, the CPU reference dequantizer, and weight-error statistics. Layouts (with bit
// diagrams) are in docs/FORMATS.md and next to the packing code in src/formats/.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kldq/formats/format.hpp"

namespace kldq::formats {

// One stored tensor of a weight in a format; a quantized checkpoint holds it as
// "<layer id>.<suffix>" (docs/FORMATS.md, "Quantized checkpoints").
struct PackedPart {
  std::string suffix;  // "weight" (bf16/fp16), "weight_packed", "weight_scale", "weight_zero"
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};
// The stored tensors of an [out, in] weight in `spec`, in a fixed order.
std::vector<PackedPart> packed_layout(const FormatSpec& spec, int64_t out, int64_t in);

struct PackedWeight {
  FormatSpec spec;
  int64_t out = 0, in = 0;
  at::Tensor codes;   // see FORMATS.md: dense/fp8 [out, in]; int [out, ceil(in*b/8)] uint8;
                      // nf4/fp4 [ceil(out*in/2)] uint8
  at::Tensor scales;  // fp16 [out, groups] (int), fp16 [out] (int8), fp32 [out] or [1] (fp8),
                      // fp32 [blocks] absmax (nf4/fp4); undefined for dense and noscale
  at::Tensor zeros;   // uint8 [out, groups] for asymmetric int formats; else undefined
  // Bytes actually held; equals spec.bytes(out, in).
  uint64_t bytes() const;
  // The stored tensors in packed_layout order, and the inverse (tensors already checked against
  // packed_layout by the caller).
  std::vector<at::Tensor> parts() const;
  static PackedWeight from_parts(const FormatSpec& spec, int64_t out, int64_t in,
                                 const std::vector<at::Tensor>& parts);
  // The same weight with every tensor on `device`.
  PackedWeight to(c10::Device device) const;
  // The same weight with `f` applied to every tensor (moves, copies, pinning).
  PackedWeight map(const std::function<at::Tensor(const at::Tensor&)>& f) const;
  // Whether the stored tensors split at any row: each row's codes, scales and zero points are
  // its own (per-row layouts; nf4/fp4 when `in` is a whole number of blocks), not one scale for
  // the whole weight (fp8 `_tensor`).
  bool rows_split() const;
  // Rows [begin, begin + n) as a weight viewing this one's tensors (needs rows_split()).
  PackedWeight rows(int64_t begin, int64_t n) const;
  // Weights of one format and column count stacked as one [sum(out), in] weight (new tensors on
  // the first one's device); nullopt when the formats or columns differ or one does not
  // rows_split(). rows() of the result give back the members.
  static std::optional<PackedWeight> concat_rows(const std::vector<const PackedWeight*>& ws);
  // Stored values no kldq writer produces and a reader would silently turn into other weights:
  // zero points beyond the format's code range, negative scales. IoError: "`where`: weight_zero
  // holds ...".
  void check_values(const std::string& where) const;
};

// Round-to-nearest quantization of w: [out, in] (any float dtype, CPU). NF4/FP4 follow
// bitsandbytes' quantize_4bit bit for bit (codes, nibble order, absmax).
PackedWeight quantize_rtn(const at::Tensor& w, const FormatSpec& spec);

// bitsandbytes' 4-bit code values of nf4 or fp4 (for codes 0..15).
const std::array<float, 16>& code_table_4bit(Format f);
// x: fp32 in [-1, 1] (any shape and device) -> int64 codes of the nearest table value.
at::Tensor nearest_codes_4bit(const at::Tensor& x, Format f);
// The tables nearest_codes_4bit searches, on one device, for callers that search many times.
struct CodeSearch {
  at::Tensor mids;    // [15] fp32: midpoints between the sorted code values
  at::Tensor lut;     // [16] int64: sorted position -> code
  at::Tensor values;  // [16] fp32: code -> value
  at::Tensor codes(const at::Tensor& x) const;  // as nearest_codes_4bit
};
CodeSearch code_search_4bit(Format f, c10::Device device);
// Codes [2k] (uint8, < 16) -> bytes [k]: byte i = code(2i) << 4 | code(2i + 1).
at::Tensor pack_nibbles(const at::Tensor& codes);

// CPU reference dequantization -> [out, in] float32.
at::Tensor dequantize(const PackedWeight& p);

// LSB-first bit stream per row: code j of a row occupies bits [j*b, (j+1)*b) of that row's bytes.
at::Tensor pack_bits(const at::Tensor& codes, int bits);  // uint8 [r, n] -> [r, ceil(n*b/8)]
at::Tensor unpack_bits(const at::Tensor& packed, int bits, int64_t n);  // inverse

struct WeightError {
  double mse = 0, sqnr_db = 0, max_abs = 0;
  double bits_per_weight = 0;
  // Gap, in bits per weight, to the Gaussian rate-distortion bound D = sigma^2 4^-R: the format's
  // bits minus the rate a Gaussian source of the weights' variance needs for the measured MSE.
  double rd_gap_bits = 0;
};
WeightError weight_error(const at::Tensor& w, const PackedWeight& p);

}  // namespace kldq::formats
