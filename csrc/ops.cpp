// mmfast operator schemas: declared once here; each backend file registers only its impl
// (csrc/cpu/<op>.cpp -> CPU key, csrc/cuda/<op>.cu -> CUDA key). Autograd and fake (meta)
// kernels are registered from Python in mmfast/ops/<op>.py.
//
// Kernel-boundary conventions (the Python wrappers guarantee them, kernels may assume them):
//   * every tensor argument is contiguous and on the same device;
//   * x / z / grad_y are float16, bfloat16, float32 or float64; "opmath" below means float64
//     when x (or z) is float64 and float32 otherwise; kernels accumulate in opmath;
//   * mask / present / subsets are bool; target and runner_up are int64;
//   * weight is (B, M) opmath (the wrapper expands (M,) weights and applies no mask);
//   * lip is (M,) or (M, C, C) opmath; bias is (C,) opmath;
//   * p_drop is (B,) float32; sigma is float32, (B,) per sample or (K,) levels (sigma_levels);
//   * offset (noisy_modality_dropout) is a 0-d int64 tensor on x's device, read by the kernel
//     (a step counter in a tensor: no recompile under torch.compile, no host sync on CUDA).
#include <torch/library.h>

TORCH_LIBRARY(mmfast, m) {
  // y (B, D) x.dtype; denom (B,) opmath. w = weight * mask (weight None -> 1);
  // denom_b = sum_m w_bm; y_b = sum_m w_bm x_bm / (normalize && denom_b > 0 ? denom_b : 1).
  m.def("masked_fusion(Tensor x, Tensor mask, Tensor? weight, bool normalize) -> (Tensor, Tensor)");
  // -> grad_x (B, M, D) x.dtype; grad_weight (B, M) opmath, or shape (0,) when !need_grad_weight.
  m.def(
      "_masked_fusion_backward(Tensor grad_y, Tensor x, Tensor mask, Tensor? weight, Tensor y, "
      "Tensor denom, bool normalize, bool need_grad_weight) -> (Tensor, Tensor)");

  // radius (B,) opmath; margin (B,) opmath; runner_up (B,) int64. q is the dual exponent
  // (p=2 -> 2, p=1 -> inf, p=inf -> 1). top_rival: rival = argmax_{k != y} fused score.
  m.def(
      "certified_margin(Tensor z, Tensor target, Tensor lip, Tensor? mask, Tensor? bias, "
      "float q, bool top_rival) -> (Tensor, Tensor, Tensor)");
  // -> grad_z (B, M, C) z.dtype; grad_lip_sel (B, M) opmath: d loss / d lip_m[y_b, k_b]
  //    (k_b = runner_up_b; for (M,) lip the same derivative w.r.t. lip_m).
  m.def(
      "_certified_margin_backward(Tensor grad_radius, Tensor grad_margin, Tensor z, Tensor target, "
      "Tensor lip, Tensor? mask, Tensor margin, Tensor runner_up, float q) -> (Tensor, Tensor)");

  // y x.shape x.dtype; keep (B,) bool; sigma_used (B,) float32. Philox4x32-10 streams as in
  // mmfast/ops/reference.py (philox_noise_counters, philox_sample_counters).
  m.def(
      "noisy_modality_dropout(Tensor x, Tensor p_drop, Tensor sigma, bool sigma_levels, int seed, "
      "Tensor offset, float fill) -> (Tensor, Tensor, Tensor)");

  // scores (S, B, C) z.dtype: masked_fusion(z, subsets_s & present, weight, normalize=True).
  m.def("subset_logits(Tensor z, Tensor subsets, Tensor? weight, Tensor? present) -> Tensor");
  // correct (S,) int64: number of rows whose argmax (lowest index on ties) equals target.
  m.def(
      "subset_accuracy(Tensor z, Tensor target, Tensor subsets, Tensor? weight, Tensor? present) "
      "-> Tensor");
}

// `import mmfast._C` loads this library (and with it the registrations above); the module
// itself is empty, as in pytorch/extension-cpp.
#include <Python.h>
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
