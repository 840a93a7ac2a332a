// Evaluation text corpora: a plain text file (used whole) or a JSONL file whose rows' "text"
// fields are joined with "\n\n" (the GPTQ / lm-evaluation-harness convention for WikiText-2).
#pragma once

#include <filesystem>
#include <string>

namespace kldq::io {

// IoError naming the file and line for a JSONL row that is not an object with a string "text".
std::string read_corpus(const std::filesystem::path& path);

}  // namespace kldq::io
