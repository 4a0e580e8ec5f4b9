// CUDA registration of the Lovász hinge: tensors in, raw pointers and the current stream out to
// csrc/cuda/lovasz_hinge.cu: the fused one-kernel forward for short fp16/bf16/fp32 rows, the packed
// path (keys, one device-wide radix sort, scan) for longer ones, else PyTorch's at::sort between
// two forward kernels.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

#include "checks/lovasz_hinge.h"
#include "cuda/lovasz_hinge.h"
#include "cuda_glue/cuda_type.h"
#include "cuda_glue/device.h"

namespace fastseg::glue {
namespace {

std::tuple<at::Tensor, at::Tensor> lovasz_hinge_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                                     const std::optional<at::Tensor>& valid) {
  checks::lovasz_hinge_inputs(logits, labels, valid);
  TORCH_CHECK_VALUE(logits.size(1) < (int64_t(1) << 31), "rows of 2**31 pixels or more are not supported");
  const DeviceGuard guard(logits.device());
  const int64_t rows = logits.size(0), pixels = logits.size(1);
  const at::Tensor x = logits.contiguous();
  const at::Tensor y = labels.contiguous();
  const at::Tensor mask = valid.has_value() ? valid->contiguous() : at::Tensor();
  const bool* mask_ptr = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  const at::ScalarType acc_dtype = checks::lovasz_accumulate_type(logits.scalar_type());
  at::Tensor losses = at::empty({rows}, logits.options());
  at::Tensor weights = at::empty({rows, pixels}, logits.options().dtype(acc_dtype));
  const cudaStream_t stream = current_stream();
  // Short rows in fp16/bf16/fp32: one kernel sorts each row in shared memory. fp64 keeps the sort
  // path below: its 64-bit keys would take twice the sort passes and the shared memory per pixel.
  if (acc_dtype == at::kFloat && pixels <= cuda::kLovaszFusedMaxPixels) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lovasz_hinge_cuda", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        check_cuda(cuda::lovasz_hinge_fused(cuda_ptr<scalar_t>(x), y.const_data_ptr<bool>(), mask_ptr, rows, pixels,
                                            cuda_mutable_ptr<scalar_t>(losses), weights.mutable_data_ptr<float>(),
                                            stream),
                   "lovasz_hinge fused");
      }
    });
    return {losses, weights};
  }
  // Longer fp16/bf16/fp32 rows whose row, error and pixel fit one 64-bit key: one device-wide
  // radix sort of every row's keys (its temporary storage from the caching allocator, no host sync).
  if (acc_dtype == at::kFloat && cuda::lovasz_hinge_packed_supported(rows, pixels)) {
    size_t temp_bytes = 0;
    check_cuda(cuda::lovasz_hinge_packed_temp_bytes(rows, pixels, &temp_bytes), "lovasz_hinge packed sort size");
    at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, logits.options().dtype(at::kByte));
    at::Tensor keys = at::empty({2, rows, pixels}, logits.options().dtype(at::kLong));  // unsorted, sorted
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lovasz_hinge_cuda", [&] {
      if constexpr (!std::is_same_v<scalar_t, double>) {
        check_cuda(cuda::lovasz_hinge_packed(cuda_ptr<scalar_t>(x), y.const_data_ptr<bool>(), mask_ptr, rows, pixels,
                                             temp.mutable_data_ptr(), temp_bytes,
                                             reinterpret_cast<uint64_t*>(keys.mutable_data_ptr<int64_t>()),
                                             cuda_mutable_ptr<scalar_t>(losses), weights.mutable_data_ptr<float>(),
                                             stream),
                   "lovasz_hinge packed");
      }
    });
    return {losses, weights};
  }
  // The rest (fp64, whose 64-bit errors do not fit the packed key, and rows x pixels too many for it)
  at::Tensor errors = at::empty({rows, pixels}, logits.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lovasz_hinge_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_cuda(cuda::lovasz_hinge_errors(cuda_ptr<scalar_t>(x), y.const_data_ptr<bool>(), mask_ptr, rows, pixels,
                                         errors.mutable_data_ptr<acc_t>(), stream),
               "lovasz_hinge errors");
  });
  // PyTorch's device-wide sort of every row by decreasing error (invalid pixels, -inf, last).
  at::Tensor sorted_errors, permutation;
  std::tie(sorted_errors, permutation) = at::sort(errors, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "lovasz_hinge_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_cuda(cuda::lovasz_hinge_scan(sorted_errors.const_data_ptr<acc_t>(), permutation.const_data_ptr<int64_t>(),
                                       y.const_data_ptr<bool>(), mask_ptr, rows, pixels,
                                       cuda_mutable_ptr<scalar_t>(losses), weights.mutable_data_ptr<acc_t>(), stream),
               "lovasz_hinge scan");
  });
  return {losses, weights};
}

at::Tensor lovasz_hinge_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& weights) {
  checks::lovasz_hinge_backward_inputs(grad_loss, weights);
  const DeviceGuard guard(grad_loss.device());
  const int64_t rows = weights.size(0), pixels = weights.size(1);
  const at::Tensor grad = grad_loss.contiguous();
  const at::Tensor weight = weights.contiguous();
  at::Tensor grad_logits = at::empty({rows, pixels}, grad_loss.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "lovasz_hinge_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_cuda(cuda::lovasz_hinge_backward(cuda_ptr<scalar_t>(grad), weight.const_data_ptr<acc_t>(), rows, pixels,
                                           cuda_mutable_ptr<scalar_t>(grad_logits), stream),
               "lovasz_hinge_backward");
  });
  return grad_logits;
}

}  // namespace

FASTSEG_CUDA_LIBRARY_IMPL(m) {
  m.impl("lovasz_hinge", &lovasz_hinge_cuda);
  m.impl("lovasz_hinge_backward", &lovasz_hinge_backward_cuda);
}

}  // namespace fastseg::glue
