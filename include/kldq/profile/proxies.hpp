// Cheap proxies of a unit's KL sensitivity (docs/PROTOCOLS.md, "Sensitivity
// profile", "Proxies"), computed in the profile's run, and their Spearman rank correlation with
// the measured KL:
//   weight MSE and SQNR of the quantization error dW = W - deq(Q(W));
//   the layer-output relative error ||X dW^T||_F / ||X W^T||_F on the reference model's inputs
//   X over the calibration windows (exllamav2's measure);
//   the empirical-Fisher-weighted error sum_ij F_ij dW_ij^2, F = sum over batches of the squared
//   gradient of the batch's mean next-token cross-entropy (one backward pass per batch).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kldq/model/decoder.hpp"

namespace kldq::profile {

// Sums over one linear layer, in double.
struct LayerProxy {
  double numel = 0;                   // weights
  double w2 = 0, dw2 = 0;             // sum W^2, sum dW^2
  double out_ref2 = 0, out_err2 = 0;  // ||X W^T||_F^2, ||X dW^T||_F^2 over all windows
  double fisher = 0;                  // sum_ij F_ij dW_ij^2
};
using LayerProxies = model::LayerMap<LayerProxy>;

// A unit's proxies, combined over its layers from the summed energies (see unit_proxies).
struct ProxyStats {
  double weight_mse = 0, weight_sqnr_db = 0, output_rel_error = 0, fisher = 0;
};

using Layers = model::LayerMap<model::QLinear>;

// The proxies of every linear layer of `m`: `dense` and `quantized` hold each layer's two states
// (dense unquantized, without input scale; quantized as the profile uses it). ids: [N, T] int64
// calibration windows, `batch` windows per forward and backward, the LM head `chunk` positions at
// a time. Runs calibration_gradients (one forward and one backward pass of the dense model per
// batch) with the observer set; `m` is left with its dense layers (grouped projections unfused).
LayerProxies layer_proxies(model::Decoder& m, const at::Tensor& ids, const Layers& dense,
                           const Layers& quantized, int64_t batch, int64_t chunk);

// A unit of several layers: weight_mse = sum dW^2 / weights (the mean over all its weights);
// weight_sqnr_db = 10 log10(sum W^2 / sum dW^2) (+inf when dW = 0); output_rel_error =
// sqrt(sum ||X dW^T||^2 / sum ||X W^T||^2) (the error energy of the unit's concatenated outputs
// over their energy); fisher = the sum of its layers' (an additive second-order loss estimate).
ProxyStats unit_proxies(const LayerProxies& layers, const std::vector<model::LayerId>& unit);

// Called after each batch's backward pass with the gradient [out, in] (compute dtype) of every
// linear layer's weight, in model order.
using GradientFn = std::function<void(const model::LayerId& id, const at::Tensor& grad)>;
// For each batch of `batch` windows of ids [N, T]: the mean next-token cross-entropy of the
// batch's B x (T-1) predictions, its gradient with respect to every linear weight by autograd
// (the LM head `chunk` positions at a time; blocks re-run one at a time for backward, so memory
// holds one block's graph), then fn(layer, grad). The decoder's observer, if set, sees each
// batch's forward once. `m` must hold dense layers, loaded outside InferenceMode; they are
// restored afterwards (grouped projections unfused). Runs outside InferenceMode whatever the
// caller's mode. Returns the number of batches.
int64_t calibration_gradients(model::Decoder& m, const at::Tensor& ids, int64_t batch,
                              int64_t chunk, const GradientFn& fn);

// Spearman's rank correlation: ties get their average rank, then the Pearson correlation of the
// ranks. nullopt for fewer than 3 values, any value not finite, or a constant ranking.
std::optional<double> spearman(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace kldq::profile
