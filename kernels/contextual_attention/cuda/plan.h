// Host side of the CUDA contextual attention: argument validation, derived sizes and the tile plan
// for one device. Plain C++ (no CUDA headers): the bindings, the TensorRT plugin and the CPU
// emulation of the kernels use it as is.
#pragma once

#include <cstdint>
#include <string>

#include "contextual_attention/contextual_attention.h"
#include "contextual_attention/cuda/geometry.h"

namespace lt {
namespace ca {

//! What the planner needs to know about the device (cudaDeviceGetAttribute values).
struct DeviceLimits {
    int smem_per_block_optin = 48 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
    int smem_per_sm = 64 * 1024;           // cudaDevAttrMaxSharedMemoryPerMultiprocessor
    int sm_count = 1;                      // cudaDevAttrMultiProcessorCount
};

//! Validates sizes and parameters and derives every size of the call.
//! mask_batch: 0 without a mask, else 1 or B. Throws std::invalid_argument naming the problem.
Geometry make_geometry(int64_t B, int64_t C, int64_t Hf, int64_t Wf, int64_t Hb, int64_t Wb,
                       int64_t mask_batch, const ContextualAttentionParams& prm);

//! Chooses the tiles of both passes for a device. Throws std::invalid_argument when even the
//! smallest tiles do not fit its shared memory (very large feature maps on a small GPU).
Plan make_plan(const Geometry& g, const DeviceLimits& lim);

//! Number of distinct raw-score rows (foreground positions) that the fused scores of the
//! foreground rectangle [ay0, ay1) x [ax0, ax1) read (the rectangle itself plus its fuse halo).
int count_sources(const Geometry& g, int ay0, int ay1, int ax0, int ax1);

//! The plan as a one-line JSON object (benchmarks, logs).
std::string describe(const Geometry& g, const Plan& p);

}  // namespace ca
}  // namespace lt
