// CUDA registration of class_avg_pool: tensors in, raw pointers and the current stream out to
// csrc/cuda/class_avg_pool.cu.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks/class_avg_pool.h"
#include "cuda/class_avg_pool.h"
#include "cuda_glue/cuda_type.h"
#include "cuda_glue/device.h"

namespace fastseg::glue {
namespace {

std::tuple<at::Tensor, at::Tensor> class_avg_pool_cuda(const at::Tensor& features, const at::Tensor& labels,
                                                       int64_t num_classes, int64_t /*ignore_index*/) {
  checks::class_avg_pool_inputs(features, labels, num_classes);
  const int64_t batch = features.size(0), channels = features.size(1);
  const int64_t pixels = features.size(2) * features.size(3);
  const DeviceGuard guard(features.device());
  const at::Tensor feats = features.contiguous();
  const at::Tensor labs = labels.contiguous();
  at::Tensor centers = at::empty({batch, num_classes, channels}, features.options());
  at::Tensor counts = at::empty({batch, num_classes}, labels.options());
  cuda::ClassAvgPoolPlan plan;
  TORCH_CHECK_VALUE(cuda::class_avg_pool_plan(batch, channels, pixels, num_classes, features.element_size(),
                                              &plan) == cudaSuccess,
                    "class_avg_pool: num_classes=", num_classes, " does not fit the CUDA kernel's shared memory");
  at::Tensor workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes)}, features.options().dtype(at::kByte));
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "class_avg_pool_cuda", [&] {
    check_cuda(cuda::class_avg_pool_forward(cuda_ptr<scalar_t>(feats), labs.const_data_ptr<int64_t>(), batch,
                                            channels, pixels, num_classes, plan, workspace.data_ptr(),
                                            cuda_mutable_ptr<scalar_t>(centers), counts.data_ptr<int64_t>(), stream),
               "class_avg_pool");
  });
  return {centers, counts};
}

at::Tensor class_avg_pool_backward_cuda(const at::Tensor& grad_centers, const at::Tensor& labels,
                                        const at::Tensor& counts, int64_t /*ignore_index*/) {
  checks::class_avg_pool_backward_inputs(grad_centers, labels, counts);
  const int64_t batch = grad_centers.size(0), num_classes = grad_centers.size(1), channels = grad_centers.size(2);
  const DeviceGuard guard(grad_centers.device());
  const at::Tensor grad = grad_centers.contiguous();
  const at::Tensor labs = labels.contiguous();
  const at::Tensor count = counts.contiguous();
  at::Tensor grad_features = at::empty({batch, channels, labels.size(1), labels.size(2)}, grad_centers.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "class_avg_pool_backward_cuda", [&] {
    check_cuda(cuda::class_avg_pool_backward(cuda_ptr<scalar_t>(grad), labs.const_data_ptr<int64_t>(),
                                             count.const_data_ptr<int64_t>(), batch, channels,
                                             labels.size(1) * labels.size(2), num_classes,
                                             cuda_mutable_ptr<scalar_t>(grad_features), stream),
               "class_avg_pool_backward");
  });
  return grad_features;
}

}  // namespace

FASTSEG_CUDA_LIBRARY_IMPL(m) {
  m.impl("class_avg_pool", &class_avg_pool_cuda);
  m.impl("class_avg_pool_backward", &class_avg_pool_backward_cuda);
}

}  // namespace fastseg::glue
