// CUDA registration of gaussian_center_distance: tensors in, raw pointers and the current stream out
// to csrc/cuda/gaussian_center_distance.cu.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <utility>

#include "checks/gaussian_center_distance.h"
#include "cuda/gaussian_center_distance.h"
#include "cuda_glue/cuda_type.h"
#include "cuda_glue/device.h"

namespace fastseg::glue {
namespace {

using Shapes = checks::GaussianCenterDistanceShape;

Shapes check_inputs(const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& margins) {
  const Shapes shapes = checks::gaussian_center_distance_shape(embeddings, centers, margins);
  TORCH_CHECK_VALUE(shapes.batch <= 65535, "gaussian_center_distance: batch ", shapes.batch,
                    " exceeds the CUDA grid limit 65535");
  return shapes;
}

// At least `count` arrival counters of the backward's last-block finalize for `stream` on `like`'s
// device: zeroed when first allocated (or grown), then left zero by every launch (the last block of
// each counter resets it), so a call costs no memset. One buffer per (device, stream): launches on one
// stream never overlap, launches on two streams never share a counter. Never freed (a few bytes per
// stream; no CUDA frees during static destruction). While the stream captures a CUDA graph, a
// buffer zeroed by the graph itself: a cached one first zeroed inside a capture would stay
// uninitialised until the graph's first replay.
at::Tensor arrival_counters(const at::Tensor& like, int64_t count, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
  if (capture != cudaStreamCaptureStatusNone) return at::zeros({count}, like.options().dtype(at::kInt));
  static std::mutex mutex;
  static auto* buffers = new std::map<std::pair<int64_t, cudaStream_t>, at::Tensor>();
  const std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& buffer = (*buffers)[{like.get_device(), stream}];
  if (!buffer.defined() || buffer.numel() < count) buffer = at::zeros({count}, like.options().dtype(at::kInt));
  return buffer;
}

at::Tensor gaussian_center_distance_cuda(const at::Tensor& embeddings, const at::Tensor& centers,
                                         const at::Tensor& margins, double delta) {
  const Shapes n = check_inputs(embeddings, centers, margins);
  const DeviceGuard guard(embeddings.device());
  const at::Tensor x = embeddings.contiguous();
  const at::Tensor s = centers.contiguous();
  const at::Tensor m = margins.contiguous();
  at::Tensor phi = at::empty({n.batch, n.classes, embeddings.size(2), embeddings.size(3)}, embeddings.options());
  const cudaStream_t stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_center_distance_cuda", [&] {
    check_cuda(cuda::gaussian_center_distance_forward(cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(s),
                                                      cuda_ptr<scalar_t>(m), delta, n.batch, n.channels, n.pixels,
                                                      n.classes, cuda_mutable_ptr<scalar_t>(phi), stream),
               "gaussian_center_distance");
  });
  return phi;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_center_distance_backward_cuda(
    const at::Tensor& grad_phi, const at::Tensor& embeddings, const at::Tensor& centers, const at::Tensor& margins,
    double delta) {
  const Shapes n = check_inputs(embeddings, centers, margins);
  checks::gaussian_center_distance_grad_phi(grad_phi, embeddings, n);
  const DeviceGuard guard(embeddings.device());
  const at::Tensor grad = grad_phi.contiguous();
  const at::Tensor x = embeddings.contiguous();
  const at::Tensor s = centers.contiguous();
  const at::Tensor m = margins.contiguous();
  at::Tensor grad_embeddings = at::empty(embeddings.sizes(), embeddings.options());
  at::Tensor grad_centers = at::empty({n.batch, n.classes, n.channels}, embeddings.options());
  at::Tensor grad_margins = at::empty({n.batch, n.classes}, embeddings.options());
  cuda::GaussianCenterDistancePlan plan;
  check_cuda(cuda::gaussian_center_distance_plan(n.batch, n.channels, n.pixels, n.classes, embeddings.element_size(),
                                                 &plan),
             "gaussian_center_distance_backward");
  at::Tensor workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes)}, embeddings.options().dtype(at::kByte));
  const cudaStream_t stream = current_stream();
  const at::Tensor counters = arrival_counters(embeddings, plan.arrival_counters, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_center_distance_backward_cuda", [&] {
    check_cuda(cuda::gaussian_center_distance_backward(
                   cuda_ptr<scalar_t>(grad), cuda_ptr<scalar_t>(x), cuda_ptr<scalar_t>(s), cuda_ptr<scalar_t>(m), delta,
                   n.batch, n.channels, n.pixels, n.classes, plan, workspace.data_ptr(),
                   static_cast<unsigned int*>(counters.data_ptr()), cuda_mutable_ptr<scalar_t>(grad_embeddings),
                   cuda_mutable_ptr<scalar_t>(grad_centers), cuda_mutable_ptr<scalar_t>(grad_margins), stream),
               "gaussian_center_distance_backward");
  });
  return {grad_embeddings, grad_centers, grad_margins};
}

}  // namespace

FASTSEG_CUDA_LIBRARY_IMPL(m) {
  m.impl("gaussian_center_distance", &gaussian_center_distance_cuda);
  m.impl("gaussian_center_distance_backward", &gaussian_center_distance_backward_cuda);
}

}  // namespace fastseg::glue
