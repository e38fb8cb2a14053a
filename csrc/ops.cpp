// Operator schemas of the vjepa_fast library: the one place that says what each op takes and returns.
// Kernels are registered per dispatch key next to their code (gather_cpu.cpp, gather_cuda.cu, ...); the Python side
// (vjepa_fast/ops/*.py) adds autograd formulas and fake (meta) implementations with torch.library.
#include <torch/library.h>

TORCH_LIBRARY(vjepa_fast, m) {
  // out[r] = src[src_rows[r]] + pos[pos_rows[r]] (pos optional; pos_rows is not read without it), computed in fp32,
  // stored in src.dtype: the context encoder's masked tokens (src = the clips' tokens, pos = the position table)
  // and the predictor's layout (src = [projected context rows ; mask tokens]). `unique_rows` does not change the
  // forward result: it picks the backward algorithm (like aten::embedding's scale_grad_by_freq, an argument the
  // forward only passes on).
  m.def("indexed_gather_add(Tensor src, Tensor src_rows, Tensor? pos, Tensor pos_rows, bool unique_rows=False) "
        "-> Tensor", {at::Tag::pt2_compliant_tag});
  // d(src) of indexed_gather_add: [num_src_rows, D], zero where no row was gathered, the sum of the grad rows where
  // several were, summed in fp32 and rounded once. unique_rows=True: each destination row is written once by walking
  // the list of its sources (no atomics; best when rows repeat a few times); False: accumulation (CUDA: runs of equal
  // destinations summed in registers, then fp32 atomics; best when a row repeats very often, as a mask token does).
  // Both are exact for any rows.
  m.def("indexed_gather_add_backward(Tensor grad, Tensor src_rows, int num_src_rows, bool unique_rows) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // targets[i] <- momentum * targets[i] + (1 - momentum) * sources[i], in place, fp32 targets, fp32/bf16 sources.
  // `apply`, when given, is a 0-d bool tensor on the targets' device: where it is false the targets are left
  // bit-identical. It is read by the kernel, not the host, so a step can skip its update without a host sync.
  m.def("ema_update_(Tensor(a!)[] targets, Tensor[] sources, float momentum, Tensor? apply=None) -> ()",
        {at::Tag::pt2_compliant_tag});
}
