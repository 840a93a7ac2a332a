// The switch of chained (programmatic dependent) launches, cuda_common.cuh's launch_chained:
// KLDQ_PDL read once, the device's support checked once, set_chaining for tests; and EnvSwitch,
// the kernels' on/off switches.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "fused_cuda.hpp"

namespace kldq::kernels::cuda {
namespace {

// launch_chained's switch.
EnvSwitch& chain_switch() {
  static EnvSwitch s("KLDQ_PDL", "chained kernel launches");
  return s;
}

// A kernel of this library's build, whose ptxVersion tells which architecture its code targets.
__global__ void chain_probe() {}

}  // namespace

bool EnvSwitch::on() {
  int v = state_.load();
  if (v < 0) {
    const char* env = std::getenv(name_);
    const std::string text = env ? env : "1";
    if (text != "0" && text != "1")
      throw std::runtime_error(std::string(name_) + " must be 0 or 1 (" + what_ + "), not '" +
                               text + "'");
    v = text == "1";
    state_.store(v);
  }
  return v == 1;
}

bool chaining() {
  if (!chain_switch().on()) return false;
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
  chain_switch().set(on);
}

}  // namespace kldq::kernels::cuda
