// CUDA kernels of masked_gather and its backward (see docs/kernels.md, "Masked gather").
//
// Row kernels use a 2-D block: threadIdx.x walks the D columns of one row (as 16-byte packs when D and the pointers
// allow it, single elements otherwise), threadIdx.y picks one of several rows per block, and the grid strides over
// rows. Every element is read once and written once; pos rows are shared by the B samples and hit in L2.
#include "checks.h"
#include "cuda_utils.cuh"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

namespace vjepa_fast {
namespace cuda {
namespace {

constexpr int kThreads = kRowThreads;  // row_launch / first_row / row_stride: cuda_utils.cuh

// out[r] = tok[rows[r]] + pos[rows[r] % N] in fp32, rounded once to T. `cols` = D / VEC packs per row.
// A row index outside [0, M) cannot be reported without a host sync, so its output row is filled with NaN
// (the Python wrapper can check the range first with check_range=True).
template <typename T, typename P, int VEC>
__global__ void __launch_bounds__(kThreads) gather_fwd_kernel(const T* __restrict__ tok, const P* __restrict__ pos,
                                                              const int64_t* __restrict__ rows, T* __restrict__ out,
                                                              int64_t R, int64_t N, int64_t M, int64_t cols) {
  using TP = Pack<T, VEC>;
  using PP = Pack<P, VEC>;
  const TP* tokp = reinterpret_cast<const TP*>(tok);
  const PP* posp = reinterpret_cast<const PP*>(pos);
  TP* outp = reinterpret_cast<TP*>(out);
  for (int64_t r = first_row(); r < R; r += row_stride()) {
    const int64_t row = rows[r];
    TP* o = outp + r * cols;
    if (row < 0 || row >= M) {
      TP nan_pack;
#pragma unroll
      for (int k = 0; k < VEC; ++k) nan_pack.v[k] = from_f32<T>(__int_as_float(0x7fc00000));
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = nan_pack;
      continue;
    }
    const TP* s = tokp + row * cols;
    if (posp == nullptr) {
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = s[c];
      continue;
    }
    const PP* p = posp + (row % N) * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      TP a = s[c];
      const PP b = p[c];
#pragma unroll
      for (int k = 0; k < VEC; ++k) a.v[k] = from_f32<T>(to_f32(a.v[k]) + to_f32(b.v[k]));
      o[c] = a;
    }
  }
}

// Backward, unique path, pass 1: thread r pushes itself on the list of its destination row:
// next[r] = old head[row], head[row] = r. Out-of-range rows are skipped.
__global__ void link_rows_kernel(const int64_t* __restrict__ rows, int64_t R, int64_t M, int* __restrict__ head,
                                 int* __restrict__ next) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < R;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = rows[r];
    if (row < 0 || row >= M) continue;
    next[r] = atomicExch(head + row, static_cast<int>(r));
  }
}

// Pass 2: every destination row written exactly once, no atomics: zeros, a copy of its single source, or the fp32
// sum of its sources rounded once. The list order depends on pass 1's scheduling, so with three or more sources
// the fp32 sum order (and possibly the last bit) can vary from run to run; with one or two it cannot.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) scatter_dest_kernel(const T* __restrict__ grad,
                                                                const int* __restrict__ head,
                                                                const int* __restrict__ next, T* __restrict__ out,
                                                                int64_t M, int64_t cols) {
  using TP = Pack<T, VEC>;
  const TP* g = reinterpret_cast<const TP*>(grad);
  TP* o = reinterpret_cast<TP*>(out);
  for (int64_t d = first_row(); d < M; d += row_stride()) {
    const int h = head[d];
    TP* od = o + d * cols;
    if (h < 0) {
      TP zero;
#pragma unroll
      for (int k = 0; k < VEC; ++k) zero.v[k] = from_f32<T>(0.0f);
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) od[c] = zero;
      continue;
    }
    const int second = next[h];
    const TP* gh = g + static_cast<int64_t>(h) * cols;
    if (second < 0) {
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) od[c] = gh[c];
      continue;
    }
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float acc[VEC];
      TP a = gh[c];
#pragma unroll
      for (int k = 0; k < VEC; ++k) acc[k] = to_f32(a.v[k]);
      for (int r = second; r >= 0; r = next[r]) {
        a = g[static_cast<int64_t>(r) * cols + c];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += to_f32(a.v[k]);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) a.v[k] = from_f32<T>(acc[k]);
      od[c] = a;
    }
  }
}

// Accumulating path: every source row added into an fp32 buffer with atomics.
template <typename T>
__global__ void __launch_bounds__(kThreads) scatter_add_kernel(const T* __restrict__ grad,
                                                               const int64_t* __restrict__ rows,
                                                               float* __restrict__ acc, int64_t R, int64_t M,
                                                               int64_t D) {
  for (int64_t r = first_row(); r < R; r += row_stride()) {
    const int64_t row = rows[r];
    if (row < 0 || row >= M) continue;
    float* a = acc + row * D;
    const T* gs = grad + r * D;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) atomicAdd(a + c, to_f32(gs[c]));
  }
}

template <typename T, typename P>
void launch_gather(const at::Tensor& tokens, const P* pos, const at::Tensor& rows, at::Tensor& out) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t N = tokens.size(1), D = tokens.size(2), R = rows.size(0), M = tokens.size(0) * N;
  const T* tok = static_cast<const T*>(tokens.const_data_ptr());
  T* o = static_cast<T*>(out.mutable_data_ptr());
  const int64_t* idx = rows.const_data_ptr<int64_t>();
  const bool vec = D % VEC == 0 && pack_aligned<T, VEC>(tok) && pack_aligned<T, VEC>(o) &&
                   (pos == nullptr || pack_aligned<P, VEC>(pos));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vec) {
    const RowLaunch l = row_launch(R, D / VEC);
    gather_fwd_kernel<T, P, VEC><<<l.grid, l.block, 0, stream>>>(tok, pos, idx, o, R, N, M, D / VEC);
  } else {
    const RowLaunch l = row_launch(R, D);
    gather_fwd_kernel<T, P, 1><<<l.grid, l.block, 0, stream>>>(tok, pos, idx, o, R, N, M, D);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void gather_typed(const at::Tensor& tokens, const std::optional<at::Tensor>& pos, const at::Tensor& rows,
                  at::Tensor& out) {
  if (!pos.has_value()) {
    launch_gather<T, T>(tokens, nullptr, rows, out);
  } else if (pos->scalar_type() == at::kFloat) {
    launch_gather<T, float>(tokens, static_cast<const float*>(pos->const_data_ptr()), rows, out);
  } else {
    launch_gather<T, T>(tokens, static_cast<const T*>(pos->const_data_ptr()), rows, out);
  }
}

at::Tensor masked_gather_cuda(const at::Tensor& tokens, const std::optional<at::Tensor>& pos, const at::Tensor& rows,
                              bool /*unique_rows: backward only*/) {
  check_gather_args(tokens, pos, rows);
  const c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t R = rows.size(0), D = tokens.size(2);
  at::Tensor out = at::empty({R, D}, tokens.options());
  if (R == 0 || D == 0) return out;
  switch (tokens.scalar_type()) {
    case at::kFloat: gather_typed<float>(tokens, pos, rows, out); break;
    case at::kBFloat16: gather_typed<__nv_bfloat16>(tokens, pos, rows, out); break;
    case at::kHalf: gather_typed<__half>(tokens, pos, rows, out); break;
    default: TORCH_CHECK_VALUE(false, "masked_gather: unsupported dtype ", tokens.scalar_type());
  }
  return out;
}

template <typename T>
at::Tensor backward_typed(const at::Tensor& grad, const at::Tensor& rows, int64_t B, int64_t N, bool unique) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t R = rows.size(0), D = grad.size(1), M = B * N;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* g = static_cast<const T*>(grad.const_data_ptr());
  const int64_t* idx = rows.const_data_ptr<int64_t>();
  if (!unique) {
    at::Tensor acc = at::zeros({B, N, D}, grad.options().dtype(at::kFloat));
    if (R > 0 && D > 0) {
      const RowLaunch l = row_launch(R, D);
      scatter_add_kernel<T><<<l.grid, l.block, 0, stream>>>(g, idx, acc.mutable_data_ptr<float>(), R, M, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return grad.scalar_type() == at::kFloat ? acc : acc.to(grad.scalar_type());
  }
  at::Tensor out = at::empty({B, N, D}, grad.options());
  if (M == 0 || D == 0) return out;
  TORCH_CHECK_VALUE(R < std::numeric_limits<int>::max(), "masked_gather_backward: more than 2^31 rows");
  T* o = static_cast<T*>(out.mutable_data_ptr());
  at::Tensor head = at::empty({M}, grad.options().dtype(at::kInt));
  C10_CUDA_CHECK(cudaMemsetAsync(head.mutable_data_ptr<int>(), 0xff, sizeof(int) * M, stream));  // all -1
  at::Tensor next = at::empty({R > 0 ? R : 1}, grad.options().dtype(at::kInt));
  if (R > 0) {
    const unsigned int blocks = static_cast<unsigned int>(grid_size((R + kThreads - 1) / kThreads));
    link_rows_kernel<<<blocks, kThreads, 0, stream>>>(idx, R, M, head.mutable_data_ptr<int>(),
                                                      next.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int* hp = head.const_data_ptr<int>();
  const int* np = next.const_data_ptr<int>();
  if (D % VEC == 0 && pack_aligned<T, VEC>(g) && pack_aligned<T, VEC>(o)) {
    const RowLaunch l = row_launch(M, D / VEC);
    scatter_dest_kernel<T, VEC><<<l.grid, l.block, 0, stream>>>(g, hp, np, o, M, D / VEC);
  } else {
    const RowLaunch l = row_launch(M, D);
    scatter_dest_kernel<T, 1><<<l.grid, l.block, 0, stream>>>(g, hp, np, o, M, D);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor masked_gather_backward_cuda(const at::Tensor& grad, const at::Tensor& rows, int64_t batch,
                                       int64_t num_tokens, bool unique) {
  check_gather_backward_args(grad, rows, batch, num_tokens);
  const c10::cuda::CUDAGuard guard(grad.device());
  switch (grad.scalar_type()) {
    case at::kFloat: return backward_typed<float>(grad, rows, batch, num_tokens, unique);
    case at::kBFloat16: return backward_typed<__nv_bfloat16>(grad, rows, batch, num_tokens, unique);
    case at::kHalf: return backward_typed<__half>(grad, rows, batch, num_tokens, unique);
    default: TORCH_CHECK_VALUE(false, "masked_gather_backward: unsupported dtype ", grad.scalar_type());
  }
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(vjepa_fast, CUDA, m) {
  m.impl("masked_gather", &cuda::masked_gather_cuda);
  m.impl("masked_gather_backward", &cuda::masked_gather_backward_cuda);
}

}  // namespace vjepa_fast
