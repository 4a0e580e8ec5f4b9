// CUDA Lovász hinge (Berman et al. 2018 Eq. 8-9) on raw pointers. Layouts: logits, labels, valid,
// errors, sorted_errors, permutation, weights and grad_logits (N,P) contiguous; labels and valid
// bool (valid may be null); losses and grad_loss (N,). errors and weights are in the accumulation
// type (fp32, fp64 for double). Three forward paths: rows of at most kLovaszFusedMaxPixels in
// fp16/bf16/fp32 take lovasz_hinge_fused (one kernel, the row sorted in shared memory); longer
// fp16/bf16/fp32 rows whose row, error and pixel fit a 64-bit key take lovasz_hinge_packed (one
// device-wide radix sort of all rows' keys); the rest (fp64, more rows x pixels) take
// lovasz_hinge_errors, the caller's row sort (PyTorch's at::sort in csrc/cuda_glue/lovasz_hinge.cpp)
// and lovasz_hinge_scan.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/common.cuh"

namespace fastseg::cuda {

// The longest row lovasz_hinge_fused takes: its (key, value) pairs fit twice in shared memory
// (12 B per pixel + 34 KB of digit counters = 226 KB at 2^14 pixels, of the 227 KB opt-in).
constexpr int64_t kLovaszFusedMaxPixels = int64_t(1) << 14;

// The whole forward of rows of P <= kLovaszFusedMaxPixels pixels (cudaErrorInvalidValue above),
// scalar_t fp16/bf16/fp32, one block per row: hinge errors, a stable radix sort by decreasing error
// in shared memory (tied errors keep pixel order) and the scan of lovasz_hinge_scan; losses (N,)
// and weights (N,P) fp32 in pixel order, as the two-kernel path gives.
template <typename scalar_t>
cudaError_t lovasz_hinge_fused(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                               int64_t pixels, scalar_t* losses, float* weights, cudaStream_t stream);

// Bits of the indices 0 .. count - 1 (0 for count <= 1).
constexpr int index_bits(int64_t count) {
  int bits = 0;
  while (bits < 63 && (int64_t(1) << bits) < count) ++bits;
  return bits;
}

// The 64-bit key of a pixel in lovasz_hinge_packed, from the most significant bit: row (row_bits),
// the order-preserving descending 32-bit key of its fp32 hinge error (32), pixel (pixel_bits),
// positive (1), valid (1). The sort orders bits [sort_begin_bit, sort_end_bit): row, then error.
struct PackedKeyLayout {
  int row_bits;
  int pixel_bits;

  constexpr PackedKeyLayout(int64_t rows, int64_t pixels)
      : row_bits(index_bits(rows)), pixel_bits(index_bits(pixels)) {}
  constexpr bool fits() const { return row_bits + 32 + pixel_bits + 2 <= 64; }
  constexpr int sort_begin_bit() const { return pixel_bits + 2; }
  constexpr int sort_end_bit() const { return pixel_bits + 34 + row_bits; }
};

// Whether lovasz_hinge_packed takes rows x pixels: their keys fit 64 bits and the rows its grid.
constexpr bool lovasz_hinge_packed_supported(int64_t rows, int64_t pixels) {
  return PackedKeyLayout(rows, pixels).fits() && rows <= 65535;
}

// The device storage lovasz_hinge_packed needs for rows x pixels (its chunk counts and losses, and
// the sort's); cudaErrorInvalidValue where lovasz_hinge_packed_supported is false. No stream work.
cudaError_t lovasz_hinge_packed_temp_bytes(int64_t rows, int64_t pixels, size_t* temp_bytes);

// The whole forward of fp16/bf16/fp32 rows where lovasz_hinge_packed_supported (else
// cudaErrorInvalidValue), on `stream` without host synchronisation: every pixel's key into keys[0,
// N*P), one device-wide keys-only radix sort of them into keys[N*P, 2*N*P) (temp: temp_bytes >=
// lovasz_hinge_packed_temp_bytes of device storage), then the sorted rows scanned in chunks by
// every SM (chunk counts, the scan of lovasz_hinge_scan from them, the chunk losses summed in
// order); losses (N,) and weights (N,P) fp32 in pixel order. Tied errors keep pixel order.
template <typename scalar_t>
cudaError_t lovasz_hinge_packed(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                int64_t pixels, void* temp, size_t temp_bytes, uint64_t* keys, scalar_t* losses,
                                float* weights, cudaStream_t stream);

// errors[n,p] = 1 - logits[n,p] * (2 labels[n,p] - 1) where valid, -inf elsewhere (sorted last).
template <typename scalar_t>
cudaError_t lovasz_hinge_errors(const scalar_t* logits, const bool* labels, const bool* valid, int64_t rows,
                                int64_t pixels, acc_type<scalar_t>* errors, cudaStream_t stream);

// One block per row scans the row sorted by decreasing error (sorted_errors[n,j] =
// errors[n, permutation[n,j]], permutation[n] a permutation of [0, P)): losses and, in pixel order,
// weights[n,p] = d losses[n] / d logits[n,p] (written at p = permutation[n,j]).
template <typename scalar_t>
cudaError_t lovasz_hinge_scan(const acc_type<scalar_t>* sorted_errors, const int64_t* permutation, const bool* labels,
                              const bool* valid, int64_t rows, int64_t pixels, scalar_t* losses,
                              acc_type<scalar_t>* weights, cudaStream_t stream);

// grad_logits[n,p] = grad_loss[n] * weights[n,p], a streaming multiply.
template <typename scalar_t>
cudaError_t lovasz_hinge_backward(const scalar_t* grad_loss, const acc_type<scalar_t>* weights, int64_t rows,
                                  int64_t pixels, scalar_t* grad_logits, cudaStream_t stream);

}  // namespace fastseg::cuda
