// The fuzz targets of kldq_fuzz: one per parser of untrusted input, each with its seeds.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace kldq::fuzz {

struct Target {
  std::string name;
  std::vector<std::string> seeds;               // real files first, then hand-made ones
  std::function<void(const std::string&)> run;  // parses one input; throws kldq::Error to refuse
};

// Every target; file-based ones write their input under `work` (created here).
std::vector<Target> all_targets(const std::filesystem::path& work);

}  // namespace kldq::fuzz
