// The one way csrc/cuda launches a kernel: `<<<grid, block, shared_bytes, stream>>>` under nvcc; on
// the emulated-CUDA layer of the tests (FASTSEG_EMULATED_CUDA, tests/emulated_cuda) the same kernel
// runs on the CPU. Errors are reported by cudaGetLastError(), as after `<<<...>>>`.
#pragma once

#ifdef FASTSEG_EMULATED_CUDA
#include <fastseg_emulated_cuda.h>
#endif

#include <cuda_runtime.h>

#include <cstddef>

namespace fastseg::cuda {

// Defined where kernels are compiled: by nvcc, or on the emulated layer (headers of csrc/cuda are
// also included by the host-compiled glue, which launches nothing).
#if defined(__CUDACC__) || defined(FASTSEG_EMULATED_CUDA)
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
            const Args&... args) {
#ifdef FASTSEG_EMULATED_CUDA
  (void)stream;
  emulated::launch(reinterpret_cast<const void*>(kernel), grid, block, shared_bytes, [&] { kernel(args...); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
#endif
}
#endif

// Dynamic shared memory of the running block (the kernel's `extern __shared__` array), 128-byte aligned
// (wmma loads and stores need 32-byte aligned tiles).
#ifdef FASTSEG_EMULATED_CUDA
#define FASTSEG_DYNAMIC_SHARED(name) \
  unsigned char* name = static_cast<unsigned char*>(::fastseg::emulated::dynamic_shared_memory())
#else
#define FASTSEG_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]
#endif

}  // namespace fastseg::cuda
