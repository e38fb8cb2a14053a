// CPU kernels of indexed_gather_add and its backward (see docs/kernels.md, "Indexed gather-add").
// Forward: rows are independent, at::parallel_for splits them across threads. Backward: the destination rows
// repeat a lot (every target row of mask m gathers mask token m), so it is the column-parallel fp32 scatter of
// cpu_utils.h: balanced however skewed the repeats are, and deterministic.
#include "checks.h"
#include "cpu_utils.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstring>

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
      // One rounding to T of the fp32 sum (with pos in T this equals T's own add, so the reference is matched).
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
                                  const std::optional<at::Tensor>& pos, const at::Tensor& pos_rows) {
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

at::Tensor indexed_gather_add_backward_cpu(const at::Tensor& grad, const at::Tensor& src_rows, int64_t num_src_rows) {
  check_indexed_gather_backward_args(grad, src_rows, num_src_rows);
  const int64_t R = src_rows.size(0), D = grad.size(1);
  const int64_t* idx = src_rows.const_data_ptr<int64_t>();
  check_rows_in_range(idx, R, num_src_rows, "indexed_gather_add_backward", "src_rows");
  at::Tensor acc = at::zeros({num_src_rows, D}, grad.options().dtype(at::kFloat));
  if (R > 0 && D > 0) {
    float* a = acc.mutable_data_ptr<float>();
    switch (grad.scalar_type()) {
      case at::kFloat: scatter_accumulate<float>(grad.const_data_ptr<float>(), idx, a, R, D); break;
      case at::kBFloat16: scatter_accumulate<c10::BFloat16>(grad.const_data_ptr<c10::BFloat16>(), idx, a, R, D); break;
      case at::kHalf: scatter_accumulate<c10::Half>(grad.const_data_ptr<c10::Half>(), idx, a, R, D); break;
      default: TORCH_CHECK_VALUE(false, "indexed_gather_add_backward: unsupported dtype ", grad.scalar_type());
    }
  }
  return grad.scalar_type() == at::kFloat ? acc : acc.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(vjepa_fast, CPU, m) {
  m.impl("indexed_gather_add", &indexed_gather_add_cpu);
  m.impl("indexed_gather_add_backward", &indexed_gather_add_backward_cpu);
}

}  // namespace vjepa_fast
