// describe_out_of_memory: libtorch's multi-line CUDA out-of-memory text becomes one line that
// says what was being allocated, what was in use and which options lower the need.
#include "kldq/core/device.hpp"
#include "support/catch.hpp"

TEST_CASE("out-of-memory messages become one actionable line", "[core]") {
  // The caching allocator's message (torch 2.11), shortened only in its middle.
  const std::string torch =
      "CUDA out of memory. Tried to allocate 1.16 GiB. GPU 0 has a total capacity of 139.80 GiB "
      "of which 117.2 GiB is free. Including non-PyTorch memory, this process has 22.51 GiB "
      "memory in use. 22.00 GiB allowed; Of the allocated memory 21.40 GiB is allocated by "
      "PyTorch, and 94.21 MiB is reserved by PyTorch but unallocated. If reserved but\n"
      "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True";
  const std::string line = kldq::describe_out_of_memory(torch);
  CHECK(line.find('\n') == std::string::npos);
  CHECK_THAT(line, HasText("out of GPU memory: tried to allocate 1.16 GiB with 21.40 GiB already "
                           "allocated"));
  CHECK_THAT(line, HasText("--batch") && HasText("--seq-len"));
  CHECK_THAT(kldq::describe_out_of_memory("garbled"), HasText("out of GPU memory"));
}
