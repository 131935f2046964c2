// Exact top-k cosine search over an in-memory gallery of embeddings.
// Plain C++ (no Python); uses OpenMP when the build found it.
#pragma once

#include <cstdint>

namespace lt {

// For every query row, the k' = min(k, n) gallery rows with the largest dot product.
//   gallery: n x d float32, row-major, rows assumed L2-normalised (so dot product == cosine).
//   queries: q x d float32, row-major, same assumption.
//   out_idx / out_score: q x k' (row-major), gallery row index (int64) and its score.
// Each output row is sorted by score descending, ties by lower gallery index; a NaN score ranks
// like -inf, i.e. after every finite score (it is reported as NaN). Results do not depend on the
// thread count.
// Throws std::invalid_argument if k < 1 or d < 1.
void topk_cosine(const float* gallery, int64_t n, int64_t d, const float* queries, int64_t q,
                 int64_t k, int64_t* out_idx, float* out_score);

// Whether this build parallelises with OpenMP.
bool topk_uses_openmp();

}  // namespace lt
