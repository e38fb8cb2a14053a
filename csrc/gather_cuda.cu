// CUDA kernels of indexed_gather_add and its backward (see docs/kernels.md, "Gather").
//
// Forward: a row kernel with 2-D blocks (cuda_utils.cuh row_launch): threadIdx.x walks the D columns of one row (as
// 16-byte packs when D and the pointers allow it), threadIdx.y picks one of several rows per block, the grid strides
// over rows; pos rows are shared by many output rows and hit in L2.
// Backward, two algorithms with the same result up to the fp32 summation order:
// - unique_rows=False, for destinations that repeat very often (every target row of mask m gathers mask token m,
//   ~1000 times per sample), where plain per-row atomics would serialise on a few addresses: each task walks a chunk
//   of kRunRows consecutive source rows, sums runs of equal destinations in registers and issues one fp32 atomicAdd
//   per run and column (the predictor's layout puts each sequence's targets next to each other, so its mask-token
//   rows cost about one atomic per chunk);
// - unique_rows=True, for destinations gathered at most a few times (the context gather): each destination row is
//   written exactly once, walking a linked list of its sources, no atomics on the data.
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

constexpr int kRunRows = 32;  // source rows per backward task: fewer atomics per run vs. enough tasks to fill the GPU

// out[r] = src[src_rows[r]] + pos[pos_rows[r]] in fp32, rounded once to T; `cols` = D / VEC packs per row.
// An index out of range cannot be reported without a host sync: that output row is filled with NaN instead
// (the Python wrapper checks first with check_range=True).
template <typename T, typename P, int VEC>
__global__ void __launch_bounds__(kRowThreads) indexed_gather_kernel(
    const T* __restrict__ src, const int64_t* __restrict__ src_rows, const P* __restrict__ pos,
    const int64_t* __restrict__ pos_rows, T* __restrict__ out, int64_t R, int64_t S, int64_t num_pos, int64_t cols) {
  using TP = Pack<T, VEC>;
  using PP = Pack<P, VEC>;
  const TP* srcp = reinterpret_cast<const TP*>(src);
  const PP* posp = reinterpret_cast<const PP*>(pos);
  TP* outp = reinterpret_cast<TP*>(out);
  for (int64_t r = first_row(); r < R; r += row_stride()) {
    const int64_t s = src_rows[r];
    const int64_t p = posp == nullptr ? 0 : pos_rows[r];
    TP* o = outp + r * cols;
    if (s < 0 || s >= S || p < 0 || (posp != nullptr && p >= num_pos)) {
      const TP nan_pack = filled_pack<T, VEC>(__int_as_float(0x7fc00000));
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = nan_pack;
      continue;
    }
    const TP* a = srcp + s * cols;
    if (posp == nullptr) {
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = a[c];
      continue;
    }
    const PP* b = posp + p * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      TP x = a[c];
      const PP y = b[c];
#pragma unroll
      for (int k = 0; k < VEC; ++k) x.v[k] = from_f32<T>(to_f32(x.v[k]) + to_f32(y.v[k]));
      o[c] = x;
    }
  }
}

// acc[src_rows[r]] += grad[r] (fp32 acc [S, D]). Task k owns source rows [k * kRunRows, (k + 1) * kRunRows) and a
// thread one column pack of them; a run of equal destinations is summed in registers and flushed with one atomic
// per element. Out-of-range destinations are skipped. The order of atomics between tasks is not fixed, so a row
// fed by several tasks may differ in the last bit between runs.
template <typename T, int VEC>
__global__ void __launch_bounds__(kRowThreads) scatter_runs_kernel(const T* __restrict__ grad,
                                                                   const int64_t* __restrict__ src_rows,
                                                                   float* __restrict__ acc, int64_t R, int64_t S,
                                                                   int64_t cols) {
  using TP = Pack<T, VEC>;
  const TP* g = reinterpret_cast<const TP*>(grad);
  const int64_t D = cols * VEC;
  const int64_t tasks = (R + kRunRows - 1) / kRunRows;
  for (int64_t k = first_row(); k < tasks; k += row_stride()) {
    const int64_t r0 = k * kRunRows;
    const int64_t r1 = r0 + kRunRows < R ? r0 + kRunRows : R;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float sum[VEC];
      int64_t cur = -1;  // destination of the open run; -1: none (or an out-of-range one being skipped)
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = src_rows[r];
        if (row != cur) {
          if (cur >= 0) {
#pragma unroll
            for (int q = 0; q < VEC; ++q) atomicAdd(acc + cur * D + c * VEC + q, sum[q]);
          }
          cur = (row >= 0 && row < S) ? row : -1;
#pragma unroll
          for (int q = 0; q < VEC; ++q) sum[q] = 0.0f;
        }
        if (cur < 0) continue;
        const TP v = g[r * cols + c];
#pragma unroll
        for (int q = 0; q < VEC; ++q) sum[q] += to_f32(v.v[q]);
      }
      if (cur >= 0) {
#pragma unroll
        for (int q = 0; q < VEC; ++q) atomicAdd(acc + cur * D + c * VEC + q, sum[q]);
      }
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
__global__ void __launch_bounds__(kRowThreads) scatter_dest_kernel(const T* __restrict__ grad,
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
      const TP zero = filled_pack<T, VEC>(0.0f);
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

template <typename T, typename P>
void launch_forward(const at::Tensor& src, const at::Tensor& src_rows, const P* pos, const int64_t* pos_rows,
                    int64_t num_pos, at::Tensor& out) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t S = src.size(0), D = src.size(1), R = src_rows.size(0);
  const T* s = static_cast<const T*>(src.const_data_ptr());
  T* o = static_cast<T*>(out.mutable_data_ptr());
  const int64_t* si = src_rows.const_data_ptr<int64_t>();
  const bool vec = D % VEC == 0 && pack_aligned<T, VEC>(s) && pack_aligned<T, VEC>(o) &&
                   (pos == nullptr || pack_aligned<P, VEC>(pos));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (vec) {
    const RowLaunch l = row_launch(R, D / VEC);
    indexed_gather_kernel<T, P, VEC><<<l.grid, l.block, 0, stream>>>(s, si, pos, pos_rows, o, R, S, num_pos, D / VEC);
  } else {
    const RowLaunch l = row_launch(R, D);
    indexed_gather_kernel<T, P, 1><<<l.grid, l.block, 0, stream>>>(s, si, pos, pos_rows, o, R, S, num_pos, D);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void forward_typed(const at::Tensor& src, const at::Tensor& src_rows, const std::optional<at::Tensor>& pos,
                   const at::Tensor& pos_rows, at::Tensor& out) {
  if (!pos.has_value()) {
    launch_forward<T, T>(src, src_rows, nullptr, nullptr, 0, out);
    return;
  }
  const int64_t* pi = pos_rows.const_data_ptr<int64_t>();
  if (pos->scalar_type() == at::kFloat) {
    launch_forward<T, float>(src, src_rows, static_cast<const float*>(pos->const_data_ptr()), pi, pos->size(0), out);
  } else {
    launch_forward<T, T>(src, src_rows, static_cast<const T*>(pos->const_data_ptr()), pi, pos->size(0), out);
  }
}

at::Tensor indexed_gather_add_cuda(const at::Tensor& src, const at::Tensor& src_rows,
                                   const std::optional<at::Tensor>& pos, const at::Tensor& pos_rows,
                                   bool /*unique_rows: backward only*/) {
  check_indexed_gather_args(src, src_rows, pos, pos_rows);
  const c10::cuda::CUDAGuard guard(src.device());
  const int64_t R = src_rows.size(0), D = src.size(1);
  at::Tensor out = at::empty({R, D}, src.options());
  if (R == 0 || D == 0) return out;
  switch (src.scalar_type()) {
    case at::kFloat: forward_typed<float>(src, src_rows, pos, pos_rows, out); break;
    case at::kBFloat16: forward_typed<__nv_bfloat16>(src, src_rows, pos, pos_rows, out); break;
    case at::kHalf: forward_typed<__half>(src, src_rows, pos, pos_rows, out); break;
    default: TORCH_CHECK_VALUE(false, "indexed_gather_add: unsupported dtype ", src.scalar_type());
  }
  return out;
}

template <typename T>
void launch_backward(const at::Tensor& grad, const at::Tensor& src_rows, at::Tensor& acc) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t R = src_rows.size(0), D = grad.size(1), S = acc.size(0);
  const T* g = static_cast<const T*>(grad.const_data_ptr());
  const int64_t* si = src_rows.const_data_ptr<int64_t>();
  float* a = acc.mutable_data_ptr<float>();
  const int64_t tasks = (R + kRunRows - 1) / kRunRows;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (D % VEC == 0 && pack_aligned<T, VEC>(g)) {
    const RowLaunch l = row_launch(tasks, D / VEC);
    scatter_runs_kernel<T, VEC><<<l.grid, l.block, 0, stream>>>(g, si, a, R, S, D / VEC);
  } else {
    const RowLaunch l = row_launch(tasks, D);
    scatter_runs_kernel<T, 1><<<l.grid, l.block, 0, stream>>>(g, si, a, R, S, D);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_scatter_dest(const at::Tensor& grad, const at::Tensor& head, const at::Tensor& next, at::Tensor& out) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t S = out.size(0), D = grad.size(1);
  const T* g = static_cast<const T*>(grad.const_data_ptr());
  T* o = static_cast<T*>(out.mutable_data_ptr());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (D % VEC == 0 && pack_aligned<T, VEC>(g) && pack_aligned<T, VEC>(o)) {
    const RowLaunch l = row_launch(S, D / VEC);
    scatter_dest_kernel<T, VEC><<<l.grid, l.block, 0, stream>>>(g, head.const_data_ptr<int>(),
                                                                next.const_data_ptr<int>(), o, S, D / VEC);
  } else {
    const RowLaunch l = row_launch(S, D);
    scatter_dest_kernel<T, 1><<<l.grid, l.block, 0, stream>>>(g, head.const_data_ptr<int>(),
                                                              next.const_data_ptr<int>(), o, S, D);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_backward_unique(const at::Tensor& grad, const at::Tensor& src_rows, at::Tensor& out) {
  const int64_t R = src_rows.size(0), S = out.size(0);
  TORCH_CHECK_VALUE(R < std::numeric_limits<int>::max(), "indexed_gather_add_backward: more than 2^31 rows");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor head = at::empty({S}, grad.options().dtype(at::kInt));
  C10_CUDA_CHECK(cudaMemsetAsync(head.mutable_data_ptr<int>(), 0xff, sizeof(int) * S, stream));  // all -1
  at::Tensor next = at::empty({R > 0 ? R : 1}, grad.options().dtype(at::kInt));
  if (R > 0) {
    const unsigned int blocks = static_cast<unsigned int>(grid_size((R + kRowThreads - 1) / kRowThreads));
    link_rows_kernel<<<blocks, kRowThreads, 0, stream>>>(src_rows.const_data_ptr<int64_t>(), R, S,
                                                         head.mutable_data_ptr<int>(), next.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  switch (grad.scalar_type()) {
    case at::kFloat: launch_scatter_dest<float>(grad, head, next, out); break;
    case at::kBFloat16: launch_scatter_dest<__nv_bfloat16>(grad, head, next, out); break;
    case at::kHalf: launch_scatter_dest<__half>(grad, head, next, out); break;
    default: TORCH_CHECK_VALUE(false, "indexed_gather_add_backward: unsupported dtype ", grad.scalar_type());
  }
}

at::Tensor indexed_gather_add_backward_cuda(const at::Tensor& grad, const at::Tensor& src_rows, int64_t num_src_rows,
                                            bool unique_rows) {
  check_indexed_gather_backward_args(grad, src_rows, num_src_rows);
  const c10::cuda::CUDAGuard guard(grad.device());
  if (unique_rows) {
    at::Tensor out = at::empty({num_src_rows, grad.size(1)}, grad.options());
    if (num_src_rows > 0 && grad.size(1) > 0) launch_backward_unique(grad, src_rows, out);
    return out;
  }
  at::Tensor acc = at::zeros({num_src_rows, grad.size(1)}, grad.options().dtype(at::kFloat));
  if (src_rows.size(0) > 0 && grad.size(1) > 0 && num_src_rows > 0) {
    switch (grad.scalar_type()) {
      case at::kFloat: launch_backward<float>(grad, src_rows, acc); break;
      case at::kBFloat16: launch_backward<__nv_bfloat16>(grad, src_rows, acc); break;
      case at::kHalf: launch_backward<__half>(grad, src_rows, acc); break;
      default: TORCH_CHECK_VALUE(false, "indexed_gather_add_backward: unsupported dtype ", grad.scalar_type());
    }
  }
  return grad.scalar_type() == at::kFloat ? acc : acc.to(grad.scalar_type());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(vjepa_fast, CUDA, m) {
  m.impl("indexed_gather_add", &cuda::indexed_gather_add_cuda);
  m.impl("indexed_gather_add_backward", &cuda::indexed_gather_add_backward_cuda);
}

}  // namespace vjepa_fast
