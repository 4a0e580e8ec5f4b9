// The fastseg operator library: every op's schema, and the Python module's build_info().
// Kernels register themselves next to their code: csrc/cpu/<op>.cpp for CPU,
// csrc/cuda_glue/<op>.cpp for CUDA (built only when PyTorch has CUDA).
#include <torch/extension.h>

#ifdef FASTSEG_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

TORCH_LIBRARY(fastseg, m) {
  // CSFRNet Eq. 1/3: hard class-wise average pooling.
  m.def("class_avg_pool(Tensor features, Tensor labels, int num_classes, int ignore_index) -> (Tensor, Tensor)");
  m.def("class_avg_pool_backward(Tensor grad_centers, Tensor labels, Tensor counts, int ignore_index) -> Tensor");
  // CSFRNet Eq. 2: Gaussian center distance with the exp(m_k * delta) scale.
  m.def("gaussian_center_distance(Tensor embeddings, Tensor centers, Tensor margins, float delta) -> Tensor");
  m.def("gaussian_center_distance_backward(Tensor grad_phi, Tensor embeddings, Tensor centers, Tensor margins, "
        "float delta) -> (Tensor, Tensor, Tensor)");
  // ACFNet Eq. 2 (soft class-wise pooling -> centers, mass) and Eq. 3 (attentional class feature).
  m.def("soft_class_pool(Tensor features, Tensor probs) -> (Tensor, Tensor)");
  m.def("soft_class_pool_backward(Tensor grad_centers, Tensor features, Tensor probs, Tensor centers, Tensor mass) -> (Tensor, Tensor)");
  m.def("attentional_class_feature(Tensor features, Tensor probs) -> (Tensor, Tensor, Tensor)");
  m.def("attentional_class_feature_backward(Tensor grad_attended, Tensor features, Tensor probs, Tensor centers, Tensor mass) -> (Tensor, Tensor)");
  // Berman et al. 2018 Eq. 8-9 (Lovász hinge, CSFRNet Eq. 4): per-row losses, gradient weights in pixel order.
  m.def("lovasz_hinge(Tensor logits, Tensor labels, Tensor? valid) -> (Tensor, Tensor)");
  m.def("lovasz_hinge_backward(Tensor grad_loss, Tensor weights) -> Tensor");
  // DecoupleSegNet Eq. 1: bilinear feature warping by a flow field (grid_sample semantics, flow in input pixels).
  m.def("flow_warp(Tensor input, Tensor flow, str padding_mode, bool align_corners) -> Tensor");
  m.def("flow_warp_backward(Tensor grad_output, Tensor input, Tensor flow, str padding_mode, bool align_corners) -> (Tensor, Tensor)");
  // CSFRNet Eq. 6 (AAM): deformable convolution v1/v2 with torchvision's layouts.
  m.def("deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, Tensor? mask, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu"] = true;
  info["torch_version"] = FASTSEG_TORCH_VERSION;
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#ifdef FASTSEG_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  info["cuda_archs"] = FASTSEG_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_version"] = "";
  info["cuda_archs"] = "";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "fastseg compiled kernels; the ops are registered as torch.ops.fastseg.*";
  module.def("build_info", &build_info, "What this extension was built with.");
}
