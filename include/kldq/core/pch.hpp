// Precompiled header shared by every kldq target: ATen (not torch/torch.h: kldq needs no
// autograd modules or torch::nn here) plus the third-party and std headers most files use.
#pragma once

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>
