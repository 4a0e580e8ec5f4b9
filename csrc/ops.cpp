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
