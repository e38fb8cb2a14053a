// Small helpers shared by the CUDA kernels: element conversions, aligned vector packs, launch sizing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>

#include <cstdint>

namespace vjepa_fast {
namespace cuda {

// fp32 <-> element type, round-to-nearest-even (the rounding torch uses). Intrinsics only: torch builds with
// __CUDA_NO_HALF_OPERATORS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__, so no implicit conversions are relied on.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// N consecutive elements loaded / stored as one aligned access (16 bytes for N * sizeof(T) == 16; a 32-byte
// pack, e.g. 8 floats, becomes two 16-byte accesses).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// A pack with every element set to `x` (rounded to T).
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> filled_pack(float x) {
  Pack<T, N> p;
#pragma unroll
  for (int k = 0; k < N; ++k) p.v[k] = from_f32<T>(x);
  return p;
}

// Whether `p` can be accessed as Pack<T, N>.
template <typename T, int N>
inline bool pack_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// Blocks for a grid-stride loop: enough to fill every SM several times over, never more than there is work.
inline int64_t grid_size(int64_t work_blocks, int blocks_per_sm = 8) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t cap = static_cast<int64_t>(sms) * blocks_per_sm;
  return work_blocks < 1 ? 1 : (work_blocks < cap ? work_blocks : cap);
}

// Row kernels (gather_cuda.cu) use 2-D blocks of kRowThreads threads: threadIdx.x walks
// the `cols` packs of one row (a power of two up to kRowThreads), threadIdx.y picks one of the block's rows, and
// the grid strides over rows.
constexpr int kRowThreads = 256;

struct RowLaunch {
  dim3 block;
  unsigned int grid;
};

inline RowLaunch row_launch(int64_t rows, int64_t cols) {
  unsigned int tx = 1;
  while (tx < cols && tx < kRowThreads) tx *= 2;
  const unsigned int ty = kRowThreads / tx;
  const int64_t blocks = (rows + ty - 1) / ty;
  return {dim3(tx, ty), static_cast<unsigned int>(grid_size(blocks))};
}

__device__ __forceinline__ int64_t first_row() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
}
__device__ __forceinline__ int64_t row_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.y; }

}  // namespace cuda
}  // namespace vjepa_fast
