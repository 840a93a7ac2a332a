// bitsandbytes' 4-bit code values (codes 0..15) in a header without libtorch, so the CPU formats
// (src/formats/quantize.cpp) and the CUDA kernels (src/kernels/decode_cuda.cuh) read one table.
// NF4 as bitsandbytes stores it; FP4 with its exact values (bitsandbytes' CUDA decoder; its CPU
// table rounds them to 4 decimals).
#pragma once

#include <array>

namespace kldq::formats {

inline constexpr std::array<float, 16> kNF4Codes = {-1.0f,
                                                    -0.6961928009986877f,
                                                    -0.5250730514526367f,
                                                    -0.39491748809814453f,
                                                    -0.28444138169288635f,
                                                    -0.18477343022823334f,
                                                    -0.09105003625154495f,
                                                    0.0f,
                                                    0.07958029955625534f,
                                                    0.16093020141124725f,
                                                    0.24611230194568634f,
                                                    0.33791524171829224f,
                                                    0.44070982933044434f,
                                                    0.5626170039176941f,
                                                    0.7229568362236023f,
                                                    1.0f};
inline constexpr std::array<float, 16> kFP4Codes = {
    0.0f,  0.0052083333f,  0.6666667f,  1.0f,  0.33333334f,  0.5f,  0.16666667f,  0.25f,
    -0.0f, -0.0052083333f, -0.6666667f, -1.0f, -0.33333334f, -0.5f, -0.16666667f, -0.25f};

}  // namespace kldq::formats
