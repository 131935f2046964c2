// Contextual attention (DeepFill v1) forward on CUDA: host API on raw device pointers.
//
// Plain C++ (no CUDA headers) so the Python bindings and the TensorRT plugin can include it. The
// spec and golden reference are kernels/contextual_attention/README.md and reference.py (the
// default mask semantics: invalid background patches are excluded from the softmax, per-sample
// masks, a sample without any valid patch gets attention 0 and y = 0). Implementation and design:
// ca_kernels.cuh, kernels/contextual_attention/cuda/README.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "contextual_attention/contextual_attention.h"

namespace lt {
namespace cuda {

//! Storage type of f, b, mask, y and attention. Arithmetic is float32 either way.
enum class DType : int { kFloat32 = 0, kFloat16 = 1 };

//! Sizes of one call. mask_batch: 0 = no mask, else 1 (shared) or B (per sample).
struct CaShape {
    int64_t B = 0, C = 0, Hf = 0, Wf = 0, Hb = 0, Wb = 0, mask_batch = 0;
};

//! Bytes of device workspace forward() needs (independent of the device).
//! Throws std::invalid_argument for unsupported sizes / parameters (the message says which).
std::size_t contextual_attention_workspace_bytes(const CaShape& shape,
                                                 const ContextualAttentionParams& prm,
                                                 DType dtype);

//! The tiles forward() would use on the current device, as a JSON object (for benchmarks / logs).
std::string contextual_attention_plan(const CaShape& shape, const ContextualAttentionParams& prm);

//! Enqueues the forward pass on `stream` (a cudaStream_t; nullptr = the legacy default stream).
//! All pointers are device memory of the current device, C-contiguous NCHW:
//!   f (B, C, Hf, Wf), b (B, C, Hb, Wb), mask (mask_batch, 1, Hb, Wb) or nullptr (nonzero = hole),
//!   y (B, C, Hf, Wf) output (must not alias the inputs),
//!   attention (B, L, Hf/rate, Wf/rate) output or nullptr (L = background patches; only written
//!   when requested: it is the Pf x L matrix the kernel otherwise never materialises),
//!   workspace of at least contextual_attention_workspace_bytes() bytes, 256-byte aligned.
//! Asynchronous: returns after the launches. Throws std::invalid_argument for bad arguments and
//! std::runtime_error when a CUDA call fails.
void contextual_attention_forward(const void* f, const void* b, const void* mask, void* y,
                                  void* attention, void* workspace, std::size_t workspace_bytes,
                                  const CaShape& shape, const ContextualAttentionParams& prm,
                                  DType dtype, void* stream);

}  // namespace cuda
}  // namespace lt
