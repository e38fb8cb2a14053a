// CUDA kernel of ema_update_ (see docs/kernels.md, "Fused EMA update").
//
// One launch per source dtype (fp32 or bf16; targets are fp32) updates every tensor of the list. The host packs a
// small int64 table (pointers, sizes, first chunk of each tensor, alignment flag), copies it to the device from
// pinned memory without blocking the host, and the kernel's blocks stride over the flat list of fixed-size chunks,
// finding each chunk's tensor by binary search in the table. Chunks of aligned tensors use 16-byte accesses.
#include "checks.h"
#include "cuda_utils.cuh"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

namespace vjepa_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 1 << 14;  // elements; a multiple of every pack size

// The table, as consecutive int64 arrays of T entries (T + 1 for the chunk starts):
//   [target ptr | source ptr | numel | first chunk (T + 1) | packs allowed (0/1)]
struct Table {
  const int64_t* base;
  int T;
  __device__ float* target(int i) const { return reinterpret_cast<float*>(base[i]); }
  __device__ const void* source(int i) const { return reinterpret_cast<const void*>(base[T + i]); }
  __device__ int64_t numel(int i) const { return base[2 * T + i]; }
  __device__ const int64_t* chunk_start() const { return base + 3 * T; }
  __device__ bool vec(int i) const { return base[4 * T + 1 + i] != 0; }
};

// t = wt * t + ws * s; written as fma(ws, s, wt * t), which is what the reference's mul_ then add_(alpha) computes
// on the GPU (nvcc contracts a + alpha * b), with fast-math off.
__device__ __forceinline__ float ema(float t, float s, float wt, float ws) { return fmaf(ws, s, wt * t); }

// apply: nullptr (always update) or the device flag; where it is false every block returns before touching memory.
template <typename S, int VEC>
__global__ void __launch_bounds__(kThreads) ema_kernel(Table table, int64_t total_chunks, float wt, float ws,
                                                       const bool* __restrict__ apply) {
  if (apply != nullptr && !*apply) return;  // one load per block, the same address for all its threads
  using TP = Pack<float, VEC>;
  using SP = Pack<S, VEC>;
  const int64_t* starts = table.chunk_start();
  for (int64_t c = blockIdx.x; c < total_chunks; c += gridDim.x) {
    // The tensor owning chunk c: the last i with starts[i] <= c (empty tensors were left out by the host).
    int lo = 0, hi = table.T - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (starts[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    float* t = table.target(lo);
    const S* s = static_cast<const S*>(table.source(lo));
    const int64_t n = table.numel(lo);
    // Pointers read from the table are generic; saying they are global lets nvcc emit ld/st.global.
    __builtin_assume(__isGlobal(t));
    __builtin_assume(__isGlobal(s));
    const int64_t begin = (c - starts[lo]) * kChunk;
    const int64_t end = begin + kChunk < n ? begin + kChunk : n;
    int64_t i = begin;
    if (table.vec(lo)) {
      // begin is a multiple of VEC, so pack k of the chunk is at element begin + k * VEC.
      const int64_t packs = (end - begin) / VEC;
      TP* tp = reinterpret_cast<TP*>(t + begin);
      const SP* sp = reinterpret_cast<const SP*>(s + begin);
      for (int64_t k = threadIdx.x; k < packs; k += blockDim.x) {
        TP a = tp[k];
        const SP b = sp[k];
#pragma unroll
        for (int j = 0; j < VEC; ++j) a.v[j] = ema(a.v[j], to_f32(b.v[j]), wt, ws);
        tp[k] = a;
      }
      i = begin + packs * VEC;  // the tail of the last chunk of a tensor whose size is not a multiple of VEC
    }
    for (int64_t e = i + threadIdx.x; e < end; e += blockDim.x) t[e] = ema(t[e], to_f32(s[e]), wt, ws);
  }
}

// Updates targets[i] from sources[i] for the listed tensors, all with source element type S, in one launch.
template <typename S>
void launch_group(at::TensorList targets, at::TensorList sources, const std::vector<size_t>& ids, float wt, float ws,
                  const bool* apply) {
  constexpr int VEC = 16 / sizeof(S);
  const int T = static_cast<int>(ids.size());
  at::Tensor host = at::empty({5 * T + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  int64_t chunks = 0;
  for (int j = 0; j < T; ++j) {
    const at::Tensor& t = targets[ids[j]];
    const at::Tensor& s = sources[ids[j]];
    float* tp = t.mutable_data_ptr<float>();
    const void* sp = s.const_data_ptr();
    h[j] = reinterpret_cast<int64_t>(tp);
    h[T + j] = reinterpret_cast<int64_t>(sp);
    h[2 * T + j] = t.numel();
    h[3 * T + j] = chunks;
    h[4 * T + 1 + j] = pack_aligned<float, VEC>(tp) && pack_aligned<S, VEC>(sp);
    chunks += (t.numel() + kChunk - 1) / kChunk;
  }
  h[4 * T] = chunks;
  // Pinned -> device copy on the current stream: asynchronous, and torch's host allocator keeps the pinned block
  // alive until the copy has run. (Not CUDA-graph safe: a replay would reread a recycled host block.)
  at::Tensor table = host.to(targets[ids[0]].device(), at::kLong, /*non_blocking=*/true);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int grid = static_cast<unsigned int>(grid_size(chunks));
  ema_kernel<S, VEC><<<grid, kThreads, 0, stream>>>(Table{table.const_data_ptr<int64_t>(), T}, chunks, wt, ws,
                                                     apply);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void ema_update_cuda(at::TensorList targets, at::TensorList sources, double momentum,
                     const std::optional<at::Tensor>& apply) {
  check_ema_args(targets, sources, momentum, apply);
  if (targets.empty()) return;
  const c10::cuda::CUDAGuard guard(targets[0].device());
  std::vector<size_t> f32, bf16;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].numel() == 0) continue;
    (sources[i].scalar_type() == at::kBFloat16 ? bf16 : f32).push_back(i);
  }
  const float wt = static_cast<float>(momentum);
  const float ws = static_cast<float>(1.0 - momentum);
  const bool* flag = apply.has_value() ? apply->const_data_ptr<bool>() : nullptr;  // a device pointer: never read here
  if (!f32.empty()) launch_group<float>(targets, sources, f32, wt, ws, flag);
  if (!bf16.empty()) launch_group<__nv_bfloat16>(targets, sources, bf16, wt, ws, flag);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(vjepa_fast, CUDA, m) { m.impl("ema_update_", &cuda::ema_update_cuda); }

}  // namespace vjepa_fast
