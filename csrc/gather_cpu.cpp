// CPU kernels of masked_gather and its backward (see docs/kernels.md, "Masked gather").
// Rows are independent, so at::parallel_for splits them across threads; the per-row loop over D is a plain
// contiguous loop the compiler vectorises (float) or a memcpy when there is no position embedding.
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
void gather_rows(const T* tok, const P* pos, const int64_t* rows, T* out, int64_t R, int64_t N, int64_t D) {
  at::parallel_for(0, R, rows_grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* src = tok + rows[r] * D;
      T* dst = out + r * D;
      if (pos == nullptr) {
        std::memcpy(dst, src, sizeof(T) * D);
        continue;
      }
      const P* p = pos + (rows[r] % N) * D;
      // One rounding to T of the fp32 sum (the reference rounds pos to T first when the dtypes differ).
      for (int64_t d = 0; d < D; ++d) {
        dst[d] = static_cast<T>(static_cast<float>(src[d]) + static_cast<float>(p[d]));
      }
    }
  });
}

template <typename T>
void gather_dispatch_pos(const at::Tensor& tokens, const std::optional<at::Tensor>& pos, const at::Tensor& rows,
                         at::Tensor& out) {
  const int64_t N = tokens.size(1), D = tokens.size(2), R = rows.size(0);
  const T* tok = tokens.const_data_ptr<T>();
  const int64_t* idx = rows.const_data_ptr<int64_t>();
  T* o = out.mutable_data_ptr<T>();
  if (!pos.has_value()) {
    gather_rows<T, T>(tok, nullptr, idx, o, R, N, D);
  } else if (pos->scalar_type() == tokens.scalar_type()) {
    gather_rows<T, T>(tok, pos->const_data_ptr<T>(), idx, o, R, N, D);
  } else {
    gather_rows<T, float>(tok, pos->const_data_ptr<float>(), idx, o, R, N, D);
  }
}

at::Tensor masked_gather_cpu(const at::Tensor& tokens, const std::optional<at::Tensor>& pos, const at::Tensor& rows,
                             bool /*unique_rows: backward only*/) {
  check_gather_args(tokens, pos, rows);
  const int64_t B = tokens.size(0), N = tokens.size(1), D = tokens.size(2), R = rows.size(0);
  check_rows_in_range(rows.const_data_ptr<int64_t>(), R, B * N, "masked_gather");
  at::Tensor out = at::empty({R, D}, tokens.options());
  if (R == 0 || D == 0) return out;
  switch (tokens.scalar_type()) {
    case at::kFloat: gather_dispatch_pos<float>(tokens, pos, rows, out); break;
    case at::kBFloat16: gather_dispatch_pos<c10::BFloat16>(tokens, pos, rows, out); break;
    case at::kHalf: gather_dispatch_pos<c10::Half>(tokens, pos, rows, out); break;
    default: TORCH_CHECK_VALUE(false, "masked_gather: unsupported dtype ", tokens.scalar_type());
  }
  return out;
}

// unique=True: every destination row is written exactly once, in parallel over destinations. The sources of each
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
at::Tensor backward_typed(const at::Tensor& grad, const at::Tensor& rows, int64_t B, int64_t N, bool unique) {
  const int64_t R = rows.size(0), D = grad.size(1), M = B * N;
  const T* g = grad.const_data_ptr<T>();
  const int64_t* idx = rows.const_data_ptr<int64_t>();
  if (unique) {
    at::Tensor out = at::empty({B, N, D}, grad.options());
    if (M > 0 && D > 0) scatter_unique<T>(g, idx, out.mutable_data_ptr<T>(), R, M, D);
    return out;
  }
  at::Tensor acc = at::zeros({B, N, D}, grad.options().dtype(at::kFloat));
  if (R > 0 && D > 0) scatter_accumulate<T>(g, idx, acc.mutable_data_ptr<float>(), R, D);
  return grad.scalar_type() == at::kFloat ? acc : acc.to(grad.scalar_type());
}

at::Tensor masked_gather_backward_cpu(const at::Tensor& grad, const at::Tensor& rows, int64_t batch,
                                      int64_t num_tokens, bool unique) {
  check_gather_backward_args(grad, rows, batch, num_tokens);
  check_rows_in_range(rows.const_data_ptr<int64_t>(), rows.size(0), batch * num_tokens, "masked_gather_backward");
  switch (grad.scalar_type()) {
    case at::kFloat: return backward_typed<float>(grad, rows, batch, num_tokens, unique);
    case at::kBFloat16: return backward_typed<c10::BFloat16>(grad, rows, batch, num_tokens, unique);
    case at::kHalf: return backward_typed<c10::Half>(grad, rows, batch, num_tokens, unique);
    default: TORCH_CHECK_VALUE(false, "masked_gather_backward: unsupported dtype ", grad.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(vjepa_fast, CPU, m) {
  m.impl("masked_gather", &masked_gather_cpu);
  m.impl("masked_gather_backward", &masked_gather_backward_cpu);
}

}  // namespace vjepa_fast
