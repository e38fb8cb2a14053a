// Input checks shared by the CPU and CUDA implementations. The Python wrappers validate first with friendlier
// messages; these keep direct torch.ops.vjepa_fast.* calls from reading out of bounds. TORCH_CHECK_VALUE raises
// ValueError and TORCH_CHECK_INDEX IndexError in Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

namespace vjepa_fast {

inline bool is_gather_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// src [S, D] contiguous fp32/bf16/fp16; src_rows int64 [R] contiguous; when pos is given: pos [P, D] contiguous,
// src's dtype or fp32, and pos_rows int64 [R] contiguous (pos_rows is not read without pos).
inline void check_indexed_gather_args(const at::Tensor& src, const at::Tensor& src_rows,
                                      const std::optional<at::Tensor>& pos, const at::Tensor& pos_rows) {
  TORCH_CHECK_VALUE(src.dim() == 2, "indexed_gather_add: src must be [S, D], got ", src.sizes());
  TORCH_CHECK_VALUE(is_gather_dtype(src.scalar_type()), "indexed_gather_add: src must be fp32/bf16/fp16, got ",
                    src.scalar_type());
  TORCH_CHECK_VALUE(src.is_contiguous(), "indexed_gather_add: src must be contiguous");
  TORCH_CHECK_VALUE(src_rows.dim() == 1 && src_rows.scalar_type() == at::kLong && src_rows.is_contiguous(),
                    "indexed_gather_add: src_rows must be a contiguous 1-D int64 tensor, got ",
                    src_rows.scalar_type(), " ", src_rows.sizes());
  TORCH_CHECK_VALUE(src_rows.device() == src.device(), "indexed_gather_add: src_rows on ", src_rows.device(),
                    " but src on ", src.device());
  if (!pos.has_value()) return;
  const at::Tensor& p = *pos;
  TORCH_CHECK_VALUE(p.dim() == 2 && p.size(1) == src.size(1), "indexed_gather_add: pos must be [P, D] with D = ",
                    src.size(1), ", got ", p.sizes());
  TORCH_CHECK_VALUE(p.scalar_type() == src.scalar_type() || p.scalar_type() == at::kFloat,
                    "indexed_gather_add: pos must have src's dtype or fp32, got ", p.scalar_type(), " with ",
                    src.scalar_type(), " src");
  TORCH_CHECK_VALUE(p.is_contiguous(), "indexed_gather_add: pos must be contiguous");
  TORCH_CHECK_VALUE(p.device() == src.device(), "indexed_gather_add: pos on ", p.device(), " but src on ",
                    src.device());
  TORCH_CHECK_VALUE(pos_rows.dim() == 1 && pos_rows.scalar_type() == at::kLong && pos_rows.is_contiguous(),
                    "indexed_gather_add: pos_rows must be a contiguous 1-D int64 tensor, got ",
                    pos_rows.scalar_type(), " ", pos_rows.sizes());
  TORCH_CHECK_VALUE(pos_rows.size(0) == src_rows.size(0), "indexed_gather_add: ", pos_rows.size(0),
                    " pos_rows but ", src_rows.size(0), " src_rows");
  TORCH_CHECK_VALUE(pos_rows.device() == src.device(), "indexed_gather_add: pos_rows on ", pos_rows.device(),
                    " but src on ", src.device());
}

// grad [R, D] contiguous fp32/bf16/fp16, src_rows int64 [R]; num_src_rows >= 0.
inline void check_indexed_gather_backward_args(const at::Tensor& grad, const at::Tensor& src_rows,
                                               int64_t num_src_rows) {
  TORCH_CHECK_VALUE(grad.dim() == 2, "indexed_gather_add_backward: grad must be [R, D], got ", grad.sizes());
  TORCH_CHECK_VALUE(is_gather_dtype(grad.scalar_type()),
                    "indexed_gather_add_backward: grad must be fp32/bf16/fp16, got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.is_contiguous(), "indexed_gather_add_backward: grad must be contiguous");
  TORCH_CHECK_VALUE(src_rows.dim() == 1 && src_rows.scalar_type() == at::kLong && src_rows.is_contiguous(),
                    "indexed_gather_add_backward: src_rows must be a contiguous 1-D int64 tensor");
  TORCH_CHECK_VALUE(src_rows.size(0) == grad.size(0), "indexed_gather_add_backward: ", src_rows.size(0),
                    " src_rows but grad has ", grad.size(0));
  TORCH_CHECK_VALUE(src_rows.device() == grad.device(), "indexed_gather_add_backward: src_rows on ",
                    src_rows.device(), " but grad on ", grad.device());
  TORCH_CHECK_VALUE(num_src_rows >= 0, "indexed_gather_add_backward: num_src_rows must be >= 0, got ", num_src_rows);
}

// Same lengths, shapes and device; fp32 contiguous targets; fp32/bf16 contiguous sources; `apply` (when given) a
// 0-d bool tensor on the targets' device (on CPU for an empty list).
inline void check_ema_args(at::TensorList targets, at::TensorList sources, double momentum,
                           const std::optional<at::Tensor>& apply) {
  TORCH_CHECK_VALUE(targets.size() == sources.size(), "ema_update_: ", targets.size(), " targets but ",
                    sources.size(), " sources");
  TORCH_CHECK_VALUE(momentum >= 0.0 && momentum <= 1.0, "ema_update_: momentum must be in [0, 1], got ", momentum);
  for (size_t i = 0; i < targets.size(); ++i) {
    const at::Tensor& t = targets[i];
    const at::Tensor& s = sources[i];
    TORCH_CHECK_VALUE(t.sizes() == s.sizes(), "ema_update_: tensor ", i, ": target shape ", t.sizes(),
                      " != source shape ", s.sizes());
    TORCH_CHECK_VALUE(t.device() == targets[0].device() && s.device() == t.device(), "ema_update_: tensor ", i,
                      ": all tensors must be on ", targets[0].device());
    TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, "ema_update_: tensor ", i, ": targets must be fp32, got ",
                      t.scalar_type());
    TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kBFloat16, "ema_update_: tensor ", i,
                      ": sources must be fp32 or bf16, got ", s.scalar_type());
    TORCH_CHECK_VALUE(t.is_contiguous() && s.is_contiguous(), "ema_update_: tensor ", i, ": must be contiguous");
  }
  if (!apply.has_value()) return;
  const at::Tensor& a = *apply;
  TORCH_CHECK_VALUE(a.dim() == 0 && a.scalar_type() == at::kBool, "ema_update_: apply must be a 0-d bool tensor, got ",
                    a.scalar_type(), " ", a.sizes());
  const at::Device want = targets.empty() ? a.device() : targets[0].device();
  TORCH_CHECK_VALUE(a.device() == want, "ema_update_: apply on ", a.device(), " but the targets on ", want);
}

}  // namespace vjepa_fast
