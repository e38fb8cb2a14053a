// Helpers shared by the CPU kernels of the row gathers (gather_cpu.cpp): task sizing,
// index range checks, and the deterministic column-parallel scatter-add used by their backwards.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace vjepa_fast {

// About 32k elements per task: big enough to amortise the task, small enough to balance a few cores.
inline int64_t rows_grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

// IndexError naming the op, which index tensor (`what`), the bad value and its position.
inline void check_rows_in_range(const int64_t* rows, int64_t R, int64_t limit, const char* op,
                                const char* what = "row") {
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK_INDEX(rows[r] >= 0 && rows[r] < limit, op, ": ", what, " index ", rows[r], " at position ", r,
                      " is out of range [0, ", limit, ")");
  }
}

// acc[rows[r]] += g[r] for r in [0, R), acc fp32 [*, D] zero-initialised by the caller, rows already in range.
// Threads own disjoint column ranges, so every thread walks all rows with no races and the sum order (row
// order) is deterministic; the work is balanced however often a destination row repeats.
template <typename T>
void scatter_accumulate(const T* g, const int64_t* rows, float* acc, int64_t R, int64_t D) {
  const int64_t grain = std::max<int64_t>(64, D / std::max<int>(1, at::get_num_threads()));
  at::parallel_for(0, D, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < R; ++r) {
      float* a = acc + rows[r] * D;
      const T* s = g + r * D;
      for (int64_t c = c0; c < c1; ++c) a[c] += static_cast<float>(s[c]);
    }
  });
}

}  // namespace vjepa_fast
