// GPTQ on one weight (the algorithm of Frantar et al. 2022, as their reference implementation and
// llm-compressor run it), in fp32 on the weight's device:
//
//   H += damp * mean(diag H) * I;   U = chol(H^-1)^T (upper)         [in, in]
//   for each block of B columns [i1, i2):
//     for each column i in the block:
//       q_i   = round w_i onto the grid of its group                 (grid: formats/grid.hpp)
//       e_i   = (w_i - q_i) / U_ii
//       w_j  -= e_i * U_ij   for the block's columns j > i            (the error spread forward)
//     W[:, i2:] -= E_block @ U[i1:i2, i2:]                            (lazy batch update)
//
// Groups: a group's scale and zero point are taken from its columns' current values when its
// first column is reached (the block size is a multiple of the group, so a group never spans
// two blocks); per-channel formats take them from the original weight. With act_order the
// columns run in order of decreasing H_jj and every group's parameters come from the original
// weight first ("static" groups, llm-compressor's actorder=static): the stored layout keeps
// contiguous groups, no column permutation reaches the checkpoint.
#include "kldq/quant/gptq.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <optional>

#include "kldq/core/error.hpp"
#include "kldq/core/log.hpp"

namespace kldq::quant {
namespace {

// The upper Cholesky factor of H^-1 for H + damp * mean(diag H) * I, raising the dampening
// tenfold (from 1e-3 when it was 0) while a factorisation fails.
at::Tensor inverse_factor(const at::Tensor& h, double& damp, const std::string& layer) {
  const double mean_diag = h.diagonal().mean().item<double>();
  for (;;) {
    at::Tensor hd = h.clone();
    hd.diagonal().add_(damp * mean_diag);
    auto [l, info] = at::linalg_cholesky_ex(hd);
    if (info.item<int64_t>() == 0) {
      auto [u, info2] = at::linalg_cholesky_ex(at::cholesky_inverse(l), /*upper=*/true);
      if (info2.item<int64_t>() == 0 && u.isfinite().all().item<bool>()) return u;
    }
    const double next = damp > 0 ? damp * 10 : 1e-3;
    if (!(next <= 1e4) || !std::isfinite(mean_diag))
      throw Error(fmt::format(
          "gptq: {}: the Hessian is not positive definite even with dampening {} (non-finite "
          "calibration activations?)",
          layer, damp));
    log::warn("gptq: {}: Cholesky factorisation failed with dampening {}; retrying with {}", layer,
              damp, next);
    damp = next;
  }
}

// tr(D H D^T) for D = w - q: [out, in], h: [in, in].
double output_error(const at::Tensor& d, const at::Tensor& h) {
  return (at::matmul(d, h) * d).sum().item<double>();
}

}  // namespace

void Hessian::add(const at::Tensor& x) {
  const at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(at::kFloat);  // [tokens, in]
  if (!h_.defined()) h_ = at::zeros({x2.size(1), x2.size(1)}, x2.options());
  h_.addmm_(x2.t(), x2, /*beta=*/1, /*alpha=*/2);
  tokens_ += x2.size(0);
}

namespace {

// The grid GPTQ rounds onto: static groups (act_order, or one group per row) fixed from the
// original weight as round-to-nearest's; otherwise its parameters are filled group by group as
// the columns are reached (allocated here).
formats::Grid initial_grid(const at::Tensor& w0, const formats::FormatSpec& spec, int64_t g,
                           bool static_groups) {
  if (static_groups) return formats::make_grid(w0, spec);
  const int64_t out = w0.size(0), in = w0.size(1);
  formats::Grid grid;
  grid.spec = spec, grid.out = out, grid.in = in, grid.group = g;
  const int64_t groups = (in + g - 1) / g;
  grid.scale = at::empty({out, groups}, w0.options());
  if (spec.format == formats::Format::INT2 || spec.format == formats::Format::INT3 ||
      spec.format == formats::Format::INT4)
    grid.zero = at::empty({out, groups}, w0.options());
  return grid;
}

// GPTQ's column loop over w: [out, in] (permuted order) with u: [in, in], the upper Cholesky
// factor of the inverse Hessian, in lazy batches of B columns: each column rounded onto its
// group's grid, its scaled error propagated to the batch's later columns, and each batch's errors
// to every later column by one GEMM. The loop runs on the transposed weight, [in, out], so that a
// column is contiguous. Returns the rounded weight transposed, [in, out].
at::Tensor solve_columns(const at::Tensor& w, const at::Tensor& u,
                         const std::vector<int64_t>& order, formats::Grid& grid, int64_t g,
                         bool static_groups, int64_t B) {
  const formats::FormatSpec& spec = grid.spec;
  const int64_t in = w.size(1);
  at::Tensor wt = w.t().contiguous();  // [in, out], permuted order
  at::Tensor qt = at::empty_like(wt);  // [in, out]
  // Static groups: every group's rounder made once (act_order visits groups in any order).
  std::vector<formats::GroupRounder> rounders;
  if (static_groups)
    for (int64_t k = 0; k < grid.scale.size(1); ++k)
      rounders.emplace_back(
          spec, grid.scale.select(1, k).contiguous(),
          grid.zero.defined() ? grid.zero.select(1, k).contiguous() : at::Tensor());
  std::optional<formats::GroupRounder> dynamic;
  for (int64_t i1 = 0; i1 < in; i1 += B) {
    const int64_t n = std::min(B, in - i1);
    const at::Tensor w1 = wt.narrow(0, i1, n);  // [n, out], updated in place
    at::Tensor e1 = at::empty_like(w1);         // [n, out] scaled errors
    const at::Tensor u1 = u.narrow(0, i1, n).narrow(1, i1, n);
    const at::Tensor d1 = u1.diagonal().clone();  // [n]
    for (int64_t i = 0; i < n; ++i) {
      const int64_t col = order[static_cast<size_t>(i1 + i)], k = col / g;
      if (!static_groups && col % g == 0) {
        at::Tensor scale_k, zero_k;  // [out] from the group's current columns
        formats::group_params(w1.narrow(0, i, std::min(g, n - i)).t(), spec, scale_k, zero_k);
        grid.scale.select(1, k).copy_(scale_k);
        if (zero_k.defined()) grid.zero.select(1, k).copy_(zero_k);
        dynamic.emplace(spec, scale_k, zero_k);
      }
      const formats::GroupRounder& round =
          static_groups ? rounders[static_cast<size_t>(k)] : *dynamic;
      const at::Tensor wi = w1.select(0, i);  // [out]
      const at::Tensor qi = round(wi);
      qt.select(0, i1 + i).copy_(qi);
      at::Tensor ei = e1.select(0, i);
      at::sub_out(ei, wi, qi).div_(d1[i]);
      if (i + 1 < n)
        w1.narrow(0, i + 1, n - i - 1)
            .addr_(u1.select(0, i).narrow(0, i + 1, n - i - 1), ei, 1, -1);
    }
    if (i1 + n < in)
      wt.narrow(0, i1 + n, in - i1 - n)
          .sub_(at::matmul(u.narrow(0, i1, n).narrow(1, i1 + n, in - i1 - n).t(), e1));
  }
  return qt;
}

}  // namespace

GptqResult gptq_quantize(const at::Tensor& w_in, const at::Tensor& h_in,
                         const formats::FormatSpec& spec, const GptqOptions& o,
                         const std::string& layer) {
  const at::Tensor w0 = w_in.to(at::kFloat);  // [out, in], the original weight
  const int64_t in = w0.size(1);
  check(h_in.dim() == 2 && h_in.size(0) == in && h_in.size(1) == in,
        fmt::format("gptq: {}: Hessian shape differs from the weight's inputs", layer));
  if (!formats::has_grid(spec, in))
    throw UnsupportedError(
        fmt::format("gptq: {}: format {} has no quantization grid for {} inputs (int2/3/4, int8, "
                    "per-channel fp8, or nf4/fp4 with inputs a multiple of the block)",
                    layer, spec.name(), in));
  GptqResult r;
  at::Tensor h = h_in.to(at::kFloat).clone();
  const at::Tensor dead = h.diagonal() == 0;
  r.dead = dead.sum().item<int64_t>();
  h.diagonal().masked_fill_(dead, 1.0);

  const int64_t g = formats::grid_group(spec, in);
  const bool static_groups = o.act_order || g >= in;
  formats::Grid grid = initial_grid(w0, spec, g, static_groups);
  at::Tensor w = w0.clone();
  std::vector<int64_t> order(static_cast<size_t>(in));
  for (int64_t j = 0; j < in; ++j) order[static_cast<size_t>(j)] = j;
  at::Tensor perm;
  if (o.act_order) {
    perm = at::argsort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true);
    w = w.index_select(1, perm);
    h = h.index_select(0, perm).index_select(1, perm);
    const at::Tensor pc = perm.to(at::kCPU);
    for (int64_t j = 0; j < in; ++j) order[static_cast<size_t>(j)] = pc[j].item<int64_t>();
  }
  r.damp = o.damp;
  const at::Tensor u = inverse_factor(h, r.damp, layer);  // [in, in] upper

  // Lazy batches of a whole number of groups, so that a group's columns share a block.
  const int64_t B = g >= in ? o.block : ((std::max(o.block, g) + g - 1) / g) * g;
  const at::Tensor qt = solve_columns(w, u, order, grid, g, static_groups, B);  // [in, out]
  at::Tensor q = qt.t();  // [out, in], permuted order
  if (o.act_order) q = q.index_select(1, at::argsort(perm));
  r.q = q.contiguous();
  r.grid = grid;
  const at::Tensor h0 = h_in.to(at::kFloat);
  r.error = output_error(w0 - q, h0);
  // Static groups already hold round-to-nearest's grid (from the original weight).
  const formats::Grid rtn = static_groups ? r.grid : formats::make_grid(w0, spec);
  r.rtn_error = output_error(w0 - formats::fake_quantize(w0, rtn), h0);
  return r;
}

}  // namespace kldq::quant
