// CPU kernels of indexed_gather_add and its backward (see docs/kernels.md, "Gather").
// Forward: rows are independent, at::parallel_for splits them across threads; the per-row loop over D is a plain
// contiguous loop the compiler vectorises (float) or a memcpy when there is no position embedding.
// Backward, two algorithms with the same result (fp32 sums in source-row order, rounded once):
// - unique_rows=False: the column-parallel fp32 scatter of cpu_utils.h, balanced however skewed the repeats are
//   (the predictor's layout: every target row of mask m gathers mask token m);
// - unique_rows=True: each destination row written once by walking the list of its sources, parallel over
//   destinations (the context gather: every token row is gathered at most a few times).
#include "checks.h"
#include "cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace vjepa_fast {
namespace {

template <typename T, typename P>
void gather_add_rows(const T* src, const int64_t* src_rows, const P* pos, const int64_t* pos_rows, T* out,
                     int64_t R, int64_t D) {
  at::parallel_for(0, R, rows_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* s = src + src_rows[r] * D;
      T* dst = out + r * D;
      if (pos == nullptr) {
        std::memcpy(dst, s, sizeof(T) * D);
        continue;
      }
      const P* p = pos + pos_rows[r] * D;
      // One rounding to T of the fp32 sum (with pos in T this equals T's own add, as the plain definition's).
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(static_cast<float>(s[d]) + static_cast<float>(p[d]));
    }
  });
}

template <typename T>
void forward_typed(const at::Tensor& src, const at::Tensor& src_rows, const std::optional<at::Tensor>& pos,
                   const at::Tensor& pos_rows, at::Tensor& out) {
  const int64_t R = src_rows.size(0), D = src.size(1);
  const T* s = src.const_data_ptr<T>();
  const int64_t* si = src_rows.const_data_ptr<int64_t>();
  T* o = out.mutable_data_ptr<T>();
  if (!pos.has_value()) {
    gather_add_rows<T, T>(s, si, nullptr, nullptr, o, R, D);
  } else if (pos->scalar_type() == src.scalar_type()) {
    gather_add_rows<T, T>(s, si, pos->const_data_ptr<T>(), pos_rows.const_data_ptr<int64_t>(), o, R, D);
  } else {
    gather_add_rows<T, float>(s, si, pos->const_data_ptr<float>(), pos_rows.const_data_ptr<int64_t>(), o, R, D);
  }
}

at::Tensor indexed_gather_add_cpu(const at::Tensor& src, const at::Tensor& src_rows,
                                  const std::optional<at::Tensor>& pos, const at::Tensor& pos_rows,
                                  bool /*unique_rows: backward only*/) {
  check_indexed_gather_args(src, src_rows, pos, pos_rows);
  const int64_t R = src_rows.size(0), D = src.size(1);
  check_rows_in_range(src_rows.const_data_ptr<int64_t>(), R, src.size(0), "indexed_gather_add", "src_rows");
  if (pos.has_value()) {
    check_rows_in_range(pos_rows.const_data_ptr<int64_t>(), R, pos->size(0), "indexed_gather_add", "pos_rows");
  }
  at::Tensor out = at::empty({R, D}, src.options());
  if (R == 0 || D == 0) return out;
  switch (src.scalar_type()) {
    case at::kFloat: forward_typed<float>(src, src_rows, pos, pos_rows, out); break;
    case at::kBFloat16: forward_typed<c10::BFloat16>(src, src_rows, pos, pos_rows, out); break;
    case at::kHalf: forward_typed<c10::Half>(src, src_rows, pos, pos_rows, out); break;
    default: TORCH_CHECK_VALUE(false, "indexed_gather_add: unsupported dtype ", src.scalar_type());
  }
  return out;
}

// unique_rows=True: every destination row is written exactly once, in parallel over destinations. The sources of each
// destination form a linked list (head[d] -> next[r] -> ..., in increasing r), built serially in O(R); a row
// gathered once is copied, a repeated one is summed in fp32 in source order and rounded once.
template <typename T>
void scatter_unique(const T* g, const int64_t* rows, T* out, int64_t R, int64_t M, int64_t D) {
  std::vector<int64_t> head(M, -1), next(R);
  for (int64_t r = R - 1; r >= 0; --r) {
    next[r] = head[rows[r]];
    head[rows[r]] = r;
  }
  at::parallel_for(0, M, rows_grain(D), [&](int64_t d0, int64_t d1) {
    std::vector<float> acc;
    for (int64_t d = d0; d < d1; ++d) {
      T* dst = out + d * D;
      const int64_t h = head[d];
      if (h < 0) {
        std::fill(dst, dst + D, T(0.0f));
      } else if (next[h] < 0) {
        std::memcpy(dst, g + h * D, sizeof(T) * D);
      } else {
        acc.assign(g + h * D, g + (h + 1) * D);  // converts T -> float
        for (int64_t r = next[h]; r >= 0; r = next[r]) {
          const T* s = g + r * D;
          for (int64_t c = 0; c < D; ++c) acc[c] += static_cast<float>(s[c]);
        }
        for (int64_t c = 0; c < D; ++c) dst[c] = static_cast<T>(acc[c]);
      }
    }
  });
}

template <typename T>
at::Tensor backward_typed(const at::Tensor& grad, const at::Tensor& src_rows, int64_t S, bool unique_rows) {
  const int64_t R = src_rows.size(0), D = grad.size(1);
  const T* g = grad.const_data_ptr<T>();
  const int64_t* idx = src_rows.const_data_ptr<int64_t>();
  if (unique_rows) {
    at::Tensor out = at::empty({S, D}, grad.options());
    if (S > 0 && D > 0) scatter_unique<T>(g, idx, out.mutable_data_ptr<T>(), R, S, D);
    return out;
  }
  at::Tensor acc = at::zeros({S, D}, grad.options().dtype(at::kFloat));
  if (R > 0 && D > 0) scatter_accumulate<T>(g, idx, acc.mutable_data_ptr<float>(), R, D);
  return grad.scalar_type() == at::kFloat ? acc : acc.to(grad.scalar_type());
}

at::Tensor indexed_gather_add_backward_cpu(const at::Tensor& grad, const at::Tensor& src_rows, int64_t num_src_rows,
                                           bool unique_rows) {
  check_indexed_gather_backward_args(grad, src_rows, num_src_rows);
  check_rows_in_range(src_rows.const_data_ptr<int64_t>(), src_rows.size(0), num_src_rows,
                      "indexed_gather_add_backward", "src_rows");
  switch (grad.scalar_type()) {
    case at::kFloat: return backward_typed<float>(grad, src_rows, num_src_rows, unique_rows);
    case at::kBFloat16: return backward_typed<c10::BFloat16>(grad, src_rows, num_src_rows, unique_rows);
    case at::kHalf: return backward_typed<c10::Half>(grad, src_rows, num_src_rows, unique_rows);
    default: TORCH_CHECK_VALUE(false, "indexed_gather_add_backward: unsupported dtype ", grad.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(vjepa_fast, CPU, m) {
  m.impl("indexed_gather_add", &indexed_gather_add_cpu);
  m.impl("indexed_gather_add_backward", &indexed_gather_add_backward_cpu);
}

}  // namespace vjepa_fast
