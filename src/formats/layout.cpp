// Stored tensors of each format (the quantized-checkpoint layout of docs/FORMATS.md) and moving
// packed weights between devices.
#include <ATen/ATen.h>

#include <fmt/format.h>

#include "kldq/core/error.hpp"
#include "kldq/formats/packed.hpp"

namespace kldq::formats {
namespace {

at::ScalarType fp8_dtype(Format f) {
  return f == Format::FP8_E5M2 ? at::kFloat8_e5m2 : at::kFloat8_e4m3fn;
}

}  // namespace

std::vector<PackedPart> packed_layout(const FormatSpec& spec, int64_t out, int64_t in) {
  const FormatTraits& t = spec.traits();
  switch (spec.format) {
    case Format::BF16:
      return {{"weight", at::kBFloat16, {out, in}}};
    case Format::FP16:
      return {{"weight", at::kHalf, {out, in}}};
    case Format::FP8_E4M3_NOSCALE:
      return {{"weight_packed", at::kFloat8_e4m3fn, {out, in}}};
    case Format::FP8_E4M3:
    case Format::FP8_E5M2:
      return {{"weight_packed", fp8_dtype(spec.format), {out, in}},
              {"weight_scale", at::kFloat, {spec.per_tensor ? 1 : out}}};
    case Format::INT8:
      return {{"weight_packed", at::kChar, {out, in}}, {"weight_scale", at::kHalf, {out}}};
    case Format::INT4:
    case Format::INT3:
    case Format::INT2: {
      const int64_t groups = (in + spec.group - 1) / spec.group;
      std::vector<PackedPart> parts = {
          {"weight_packed", at::kByte, {out, (in * t.code_bits + 7) / 8}},
          {"weight_scale", at::kHalf, {out, groups}}};
      if (spec.asymmetric)
        parts.push_back({"weight_zero", spec.float_zero ? at::kHalf : at::kByte, {out, groups}});
      return parts;
    }
    case Format::NF4:
    case Format::FP4: {
      const int64_t n = out * in;
      return {{"weight_packed", at::kByte, {(n + 1) / 2}},
              {"weight_scale", at::kFloat, {(n + spec.group - 1) / spec.group}}};
    }
  }
  throw InternalError("packed_layout: unknown format");
}

std::vector<at::Tensor> PackedWeight::parts() const {
  std::vector<at::Tensor> out = {codes};
  if (scales.defined()) out.push_back(scales);
  if (zeros.defined()) out.push_back(zeros);
  return out;
}

PackedWeight PackedWeight::from_parts(const FormatSpec& spec, int64_t out, int64_t in,
                                      const std::vector<at::Tensor>& parts) {
  check(parts.size() == packed_layout(spec, out, in).size(),
        "PackedWeight::from_parts: part count differs from the layout");
  PackedWeight p;
  p.spec = spec;
  p.out = out;
  p.in = in;
  p.codes = parts[0];
  if (parts.size() > 1) p.scales = parts[1];
  if (parts.size() > 2) p.zeros = parts[2];
  return p;
}

PackedWeight PackedWeight::to(c10::Device device) const {
  return map([&](const at::Tensor& t) { return t.to(device); });
}

PackedWeight PackedWeight::map(const std::function<at::Tensor(const at::Tensor&)>& f) const {
  PackedWeight p = *this;
  if (codes.defined()) p.codes = f(codes);
  if (scales.defined()) p.scales = f(scales);
  if (zeros.defined()) p.zeros = f(zeros);
  return p;
}

bool PackedWeight::rows_split() const {
  if (spec.per_tensor) return false;
  // Flat blocks run over the row-major weight: a row boundary is a block (and byte) boundary
  // when every row holds whole blocks (blocks are a power of two >= 32, so rows hold whole bytes).
  return spec.traits().blocking != Blocking::FLAT_BLOCK || in % spec.group == 0;
}

PackedWeight PackedWeight::rows(int64_t begin, int64_t n) const {
  check(rows_split() && begin >= 0 && n >= 0 && begin + n <= out,
        fmt::format("PackedWeight::rows: rows [{}, {}) of a {} weight of {} rows", begin, begin + n,
                    spec.name(), out));
  PackedWeight p = *this;
  p.out = n;
  if (spec.traits().blocking == Blocking::FLAT_BLOCK) {
    // codes: two per byte over the flattened weight; scales: one per block of `group` weights
    if (codes.defined()) p.codes = codes.narrow(0, begin * in / 2, n * in / 2);
    if (scales.defined()) p.scales = scales.narrow(0, begin * in / spec.group, n * in / spec.group);
    return p;
  }
  // Every other layout keeps one leading entry per row: codes [out, ...], scales and zero
  // points [out] or [out, groups].
  p = map([&](const at::Tensor& t) { return t.narrow(0, begin, n); });
  p.out = n;
  return p;
}

std::optional<PackedWeight> PackedWeight::concat_rows(const std::vector<const PackedWeight*>& ws) {
  if (ws.empty()) return std::nullopt;
  const PackedWeight& first = *ws.front();
  for (const PackedWeight* w : ws)
    if (!(w->spec == first.spec) || w->in != first.in || !w->rows_split() ||
        w->parts().size() != first.parts().size())
      return std::nullopt;
  PackedWeight p = first;
  p.out = 0;
  std::vector<std::vector<at::Tensor>> parts(first.parts().size());
  for (const PackedWeight* w : ws) {
    p.out += w->out;
    const std::vector<at::Tensor> own = w->parts();
    for (size_t i = 0; i < own.size(); ++i) parts[i].push_back(own[i]);
  }
  const std::vector<at::Tensor*> slots = {&p.codes, &p.scales, &p.zeros};
  size_t next = 0;
  for (at::Tensor* slot : slots)
    if (slot->defined()) *slot = at::cat(parts[next++], 0);
  return p;
}

void PackedWeight::check_values(const std::string& where) const {
  // Shapes and dtypes were checked against packed_layout by the caller; codes need no check
  // (every bit pattern of a packed code is a grid point), zero points and scales do.
  // fz zero points are any finite float (HQQ fits them freely; finiteness is checked at load).
  if (zeros.defined() && zeros.numel() > 0 && !spec.float_zero) {
    const int64_t top = (int64_t{1} << spec.traits().code_bits) - 1;
    const int64_t max = zeros.max().item<int64_t>();
    if (max > top)
      throw IoError(
          fmt::format("{}: weight_zero holds zero point {} outside the {}-bit code range [0, {}]",
                      where, max, spec.traits().code_bits, top));
  }
  if (scales.defined() && scales.numel() > 0) {
    const int64_t negative = scales.lt(0).sum().item<int64_t>();
    if (negative > 0)
      throw IoError(
          fmt::format("{}: weight_scale holds {} negative scale(s) (scales are absolute "
                      "values: {} stores them >= 0)",
                      where, negative, spec.name()));
  }
}

}  // namespace kldq::formats
