// Contextual attention (Yu et al. 2018, DeepFill v1), fused CPU kernel, float32.
// Plain C++ (no Python); uses OpenMP when the build found it.
// Spec and golden reference: kernels/contextual_attention/README.md and reference.py (the
// default, non-legacy mask semantics: invalid background patches are excluded from the softmax,
// per-sample masks, a fully masked sample gives zero attention and y = 0).
#pragma once

#include <cstdint>

namespace lt {

struct ContextualAttentionParams {
    int ksize = 3;          // matching patch size (>= 1)
    int stride = 1;         // background patch stride in the downscaled map (>= 1)
    int rate = 2;           // downscale factor for matching (>= 1); raw patches are 2*rate
    int fuse_k = 3;         // odd, >= 1
    double softmax_scale = 10.0;
    bool fuse = true;
};

// Derived sizes of one call (see README "Derived sizes").
struct ContextualAttentionShape {
    int64_t hf = 0, wf = 0;  // downscaled foreground
    int64_t gh = 0, gw = 0;  // background patch grid; L = gh * gw
};

// Validates parameters and sizes; throws std::invalid_argument (message says what is wrong).
ContextualAttentionShape contextual_attention_shape(int64_t C, int64_t Hf, int64_t Wf, int64_t Hb,
                                                    int64_t Wb,
                                                    const ContextualAttentionParams& prm);

// f: (B, C, Hf, Wf), b: (B, C, Hb, Wb), both C-contiguous float32.
// mask: nullptr (no hole) or (mask_batch, 1, Hb, Wb) C-contiguous float32, mask_batch in {1, B};
//       nonzero = hole.
// y: (B, C, Hf, Wf) output; attention: (B, L, hf, wf) output (may be nullptr).
// Throws std::invalid_argument on bad parameters / sizes.
void contextual_attention(const float* f, const float* b, const float* mask, int64_t mask_batch,
                          int64_t B, int64_t C, int64_t Hf, int64_t Wf, int64_t Hb, int64_t Wb,
                          const ContextualAttentionParams& prm, float* y, float* attention);

// Whether this build parallelises with OpenMP.
bool contextual_attention_uses_openmp();

}  // namespace lt
