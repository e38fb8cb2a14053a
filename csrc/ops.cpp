// Operator schemas of the vjepa_fast library: the one place that says what each op takes and returns.
// Kernels are registered per dispatch key next to their code (gather_cpu.cpp, gather_cuda.cu, ...); the Python side
// (vjepa_fast/ops/*.py) adds autograd formulas and fake (meta) implementations with torch.library.
#include <torch/library.h>

TORCH_LIBRARY(vjepa_fast, m) {
  // out[r] = tokens.view(B*N, D)[rows[r]] + pos[rows[r] % N], computed in fp32, stored in tokens.dtype.
  // `unique_rows` does not change the forward result: it picks the backward algorithm (like aten::embedding's
  // scale_grad_by_freq, an argument the forward only passes on).
  m.def("masked_gather(Tensor tokens, Tensor? pos, Tensor rows, bool unique_rows=True) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // d(tokens) of masked_gather: [batch, num_tokens, D], zero where no row was gathered, the sum of grad rows where
  // several were, summed in fp32 and rounded once. unique=True: each destination row is written once by walking
  // the list of its sources (no atomics); unique=False: accumulation (CUDA: fp32 atomics). Both are exact for
  // any rows; the name says which case each is fastest for.
  m.def("masked_gather_backward(Tensor grad, Tensor rows, int batch, int num_tokens, bool unique) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // out[r] = src[src_rows[r]] + pos[pos_rows[r]] (pos optional; pos_rows is not read without it), computed in fp32,
  // stored in src.dtype. The predictor's layout step: src = [projected context rows ; mask tokens], pos = its table.
  m.def("indexed_gather_add(Tensor src, Tensor src_rows, Tensor? pos, Tensor pos_rows) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // d(src) of indexed_gather_add: [num_src_rows, D], zero where no row was gathered, the sum of the grad rows where
  // several were (a mask token is gathered once per target row), summed in fp32 and rounded once.
  m.def("indexed_gather_add_backward(Tensor grad, Tensor src_rows, int num_src_rows) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // targets[i] <- momentum * targets[i] + (1 - momentum) * sources[i], in place, fp32 targets, fp32/bf16 sources.
  m.def("ema_update_(Tensor(a!)[] targets, Tensor[] sources, float momentum) -> ()", {at::Tag::pt2_compliant_tag});
}
