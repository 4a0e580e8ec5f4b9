// The one device-wide sort of csrc/cuda: a keys-only radix sort of 64-bit keys by a bit range,
// cub::DeviceRadixSort::SortKeys under nvcc. The host compiler of the emulated-CUDA layer of the
// tests (FASTSEG_EMULATED_CUDA, tests/emulated_cuda) cannot build CUB; there the layer's own stable
// LSD radix sort (tests/emulated_cuda/runtime.cpp) takes the same arguments and the same temporary
// storage contract.
#pragma once

#include "cuda/launch.cuh"

#ifndef FASTSEG_EMULATED_CUDA
#include <cub/device/device_radix_sort.cuh>
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fastseg::cuda {

// keys_out = keys_in stably sorted by the unsigned value of bits [begin_bit, end_bit) of each key
// (keys equal there keep their input order; the other bits ride along). With temp == nullptr only
// sets temp_bytes, the device storage the sort needs, and touches no stream (CUB's convention); the
// sort itself enqueues on `stream` without synchronising the host. num_items is 64-bit: CUB (2.x
// on; CCCL 3.0 with nvcc 13) then takes 64-bit offsets and runs its onesweep passes over portions
// of < 2^28 keys, so more than 2^31 keys need no bound. keys_in and keys_out must not overlap.
inline cudaError_t radix_sort_keys(void* temp, size_t& temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                                   int64_t num_items, int begin_bit, int end_bit, cudaStream_t stream) {
#ifdef FASTSEG_EMULATED_CUDA
  (void)stream;
  return emulated::radix_sort_keys(temp, temp_bytes, keys_in, keys_out, num_items, begin_bit, end_bit);
#else
  return cub::DeviceRadixSort::SortKeys(temp, temp_bytes, keys_in, keys_out, num_items, begin_bit, end_bit, stream);
#endif
}

}  // namespace fastseg::cuda
