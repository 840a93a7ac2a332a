// The tokenizer of a GGUF export (tokenizer.ggml.* keys), as llama.cpp's converter writes it.
#pragma once

#include <filesystem>
#include <string>

#include "kldq/io/gguf.hpp"
#include "kldq/model/config.hpp"

namespace kldq::exporting {

// A sentencepiece tokenizer.model gives the "llama" vocabulary (pieces, scores, types); else
// tokenizer.json's BPE the "gpt2" one (tokens, types, merges). Padded with [PAD<id>] to the
// model's vocab_size. ConfigError naming the file for anything else.
void add_vocab(io::GgufWriter& g, const std::filesystem::path& dir, const model::ModelConfig& c,
               const std::string& arch);

}  // namespace kldq::exporting
