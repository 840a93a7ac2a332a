// The switch of chained (programmatic dependent) launches, cuda_common.cuh's launch_chained:
// KLDQ_PDL read once, the device's support checked once, set_chaining for tests.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

// launch_chained's switch: unset (-1) until the first launch reads KLDQ_PDL.
std::atomic<int> chain_state{-1};

// A kernel of this library's build, whose ptxVersion tells which architecture its code targets.
__global__ void chain_probe() {}

}  // namespace

bool chaining() {
  int on = chain_state.load();
  if (on < 0) {
    const char* env = std::getenv("KLDQ_PDL");
    const std::string v = env ? env : "1";
    if (v != "0" && v != "1")
      throw std::runtime_error("KLDQ_PDL must be 0 or 1 (chained kernel launches), not '" + v +
                               "'");
    on = v == "1";
    chain_state.store(on);
  }
  if (!on) return false;
  // The device must support it and run code built for it: kernels JIT-compiled from older PTX
  // (a build for 8.x run on a 9.0 device) have no chain_wait, and chained they would race.
  static const bool supported = [] {
    int dev = 0, major = 0;
    cudaFuncAttributes f{};
    const bool ok =
        cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaFuncGetAttributes(&f, chain_probe) == cudaSuccess;
    cudaGetLastError();  // a failed query leaves no error for the next launch check
    return ok && major >= 9 && f.ptxVersion >= 90;
  }();
  return supported;
}

void set_chaining(bool on) {
  chain_state.store(on ? 1 : 0);
}

}  // namespace kldq::kernels::cuda
