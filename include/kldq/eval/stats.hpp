// Summary statistics shared by the evaluations: mean, standard error, percentiles, and Wilson
// score intervals for proportions (docs/PROTOCOLS.md).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace kldq::eval {

double mean(const std::vector<double>& v);
// Sample standard deviation / sqrt(n); 0 for fewer than two values.
double stderr_of_mean(const std::vector<double>& v);
// numpy.percentile(v, q) with linear interpolation; `sorted` ascending; 0 when empty.
double percentile(const std::vector<double>& sorted, double q);
// 95 % Wilson score interval of k successes in n trials ({0, 0} for n = 0). Chosen over the
// normal approximation because flip counts are often small or zero, where the normal interval
// collapses to a point or leaves [0, 1].
std::pair<double, double> wilson_interval(int64_t k, int64_t n);

}  // namespace kldq::eval
