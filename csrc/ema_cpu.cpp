// CPU kernel of ema_update_ (see docs/kernels.md, "Fused EMA update").
// All tensors are cut into fixed-size chunks and one at::parallel_for runs over the chunks of every tensor, so
// many small tensors (biases, norms) and a few large ones (weights) spread evenly over the threads.
#include "checks.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace vjepa_fast {
namespace {

constexpr int64_t kChunk = 1 << 15;

struct Chunk {
  float* t;
  const void* s;
  bool bf16;
  int64_t n;
};

// bf16 -> fp32 is exact: the 16 bits are the high half of the float. Written on integers so the loop vectorises.
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// t = wt * t + ws * s: the reference's mul_(m) then add_(s, alpha=1-m), with the same fp32 weights.
void ema_fp32(float* __restrict__ t, const float* __restrict__ s, int64_t n, float wt, float ws) {
  for (int64_t i = 0; i < n; ++i) t[i] = wt * t[i] + ws * s[i];
}

void ema_bf16(float* __restrict__ t, const uint16_t* __restrict__ s, int64_t n, float wt, float ws) {
  for (int64_t i = 0; i < n; ++i) t[i] = wt * t[i] + ws * bf16_bits_to_float(s[i]);
}

void ema_update_cpu(at::TensorList targets, at::TensorList sources, double momentum,
                    const std::optional<at::Tensor>& apply) {
  check_ema_args(targets, sources, momentum, apply);
  if (apply.has_value() && !*apply->const_data_ptr<bool>()) return;  // the step was skipped: read once, touch nothing
  const float wt = static_cast<float>(momentum);
  const float ws = static_cast<float>(1.0 - momentum);
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < targets.size(); ++i) {
    const int64_t n = targets[i].numel();
    float* t = targets[i].mutable_data_ptr<float>();
    const bool bf16 = sources[i].scalar_type() == at::kBFloat16;
    const char* s = static_cast<const char*>(sources[i].const_data_ptr());
    const int64_t esize = bf16 ? 2 : 4;
    for (int64_t b = 0; b < n; b += kChunk) {
      chunks.push_back({t + b, s + b * esize, bf16, std::min(kChunk, n - b)});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const Chunk& k = chunks[c];
      if (k.bf16) ema_bf16(k.t, static_cast<const uint16_t*>(k.s), k.n, wt, ws);
      else ema_fp32(k.t, static_cast<const float*>(k.s), k.n, wt, ws);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(vjepa_fast, CPU, m) { m.impl("ema_update_", &ema_update_cpu); }

}  // namespace vjepa_fast
