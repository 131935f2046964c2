// Blocked dot-product scoring + per-query bounded selection; see topk.h for the contract.
//
// Work plan: queries are processed in chunks whose score matrix (chunk x n floats) stays below
// kScoreBudget. For a chunk, gallery rows are cut into fixed blocks of kBlockRows rows (threads
// take whole blocks), and each block is scored against every query in the chunk while it is hot
// in cache, so the gallery streams from memory once per chunk. Then each query (in parallel)
// selects its top k' with a bounded min-heap, or with nth_element when k' is a large share of n.
#include "topk.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu_dispatch.h"

namespace lt {
namespace {

constexpr int64_t kBlockRows = 64;                   // gallery rows scored together
constexpr int64_t kScoreBudget = int64_t(1) << 24;   // floats per query chunk (64 MiB)
constexpr int kLanes = 16;                           // independent partial sums per dot product
constexpr int64_t kParallelWork = int64_t(1) << 16;  // multiply-adds below which we stay serial

// out[qi * out_stride + r] = dot(queries[qi], rows[r]) for qi < nq, r < nrows.
// Per-lane accumulation order is fixed, so a row's score never depends on where block or
// thread boundaries fall.
LT_TARGET_CLONES
void score_block(const float* queries, int64_t nq, int64_t d, const float* rows, int64_t nrows,
                 float* out, int64_t out_stride) {
    const int64_t d_main = d - d % kLanes;
    for (int64_t qi = 0; qi < nq; ++qi) {
        const float* qv = queries + qi * d;
        float* o = out + qi * out_stride;
        int64_t r = 0;
        for (; r + 4 <= nrows; r += 4) {
            const float* g0 = rows + r * d;
            const float* g1 = g0 + d;
            const float* g2 = g1 + d;
            const float* g3 = g2 + d;
            float a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
            for (int64_t j = 0; j < d_main; j += kLanes) {
                for (int l = 0; l < kLanes; ++l) {
                    const float x = qv[j + l];
                    a0[l] += x * g0[j + l];
                    a1[l] += x * g1[j + l];
                    a2[l] += x * g2[j + l];
                    a3[l] += x * g3[j + l];
                }
            }
            for (int64_t j = d_main; j < d; ++j) {
                const int l = static_cast<int>(j - d_main);
                a0[l] += qv[j] * g0[j];
                a1[l] += qv[j] * g1[j];
                a2[l] += qv[j] * g2[j];
                a3[l] += qv[j] * g3[j];
            }
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            for (int l = 0; l < kLanes; ++l) {
                s0 += a0[l];
                s1 += a1[l];
                s2 += a2[l];
                s3 += a3[l];
            }
            o[r] = s0;
            o[r + 1] = s1;
            o[r + 2] = s2;
            o[r + 3] = s3;
        }
        for (; r < nrows; ++r) {
            const float* g0 = rows + r * d;
            float a0[kLanes] = {};
            for (int64_t j = 0; j < d_main; j += kLanes)
                for (int l = 0; l < kLanes; ++l) a0[l] += qv[j + l] * g0[j + l];
            for (int64_t j = d_main; j < d; ++j) a0[j - d_main] += qv[j] * g0[j];
            float s0 = 0.f;
            for (int l = 0; l < kLanes; ++l) s0 += a0[l];
            o[r] = s0;
        }
    }
}

// Sort key: NaN ranks like -inf (below every finite score).
inline float key(float s) { return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s; }

struct Hit {
    float key;
    int64_t idx;
};

// True when a ranks before b: higher score first, then lower index.
inline bool before(const Hit& a, const Hit& b) {
    return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

// Top kk of scores[0..n) into out (sorted). `hits` is scratch.
void select_topk(const float* scores, int64_t n, int64_t kk, std::vector<Hit>& hits,
                 int64_t* out_idx, float* out_score) {
    hits.clear();
    if (kk * 8 >= n) {
        // Large share of n: nth_element over all candidates.
        hits.resize(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) hits[i] = {key(scores[i]), i};
        if (kk < n) std::nth_element(hits.begin(), hits.begin() + kk, hits.end(), before);
        hits.resize(static_cast<size_t>(kk));
    } else {
        // Bounded heap whose front is the worst kept hit. Scanning indices in increasing order
        // means an equal score never displaces a kept one (it has a larger index).
        hits.reserve(static_cast<size_t>(kk));
        int64_t i = 0;
        for (; i < kk; ++i) hits.push_back({key(scores[i]), i});
        std::make_heap(hits.begin(), hits.end(), before);
        float worst = hits.front().key;
        for (; i < n; ++i) {
            const float s = scores[i];
            if (s > worst) {  // false for NaN
                std::pop_heap(hits.begin(), hits.end(), before);
                hits.back() = {s, i};
                std::push_heap(hits.begin(), hits.end(), before);
                worst = hits.front().key;
            }
        }
    }
    std::sort(hits.begin(), hits.end(), before);
    for (int64_t j = 0; j < kk; ++j) {
        out_idx[j] = hits[j].idx;
        out_score[j] = scores[hits[j].idx];
    }
}

}  // namespace

bool topk_uses_openmp() {
#if defined(LOOKTHROUGH_WITH_OPENMP)
    return true;
#else
    return false;
#endif
}

void topk_cosine(const float* gallery, int64_t n, int64_t d, const float* queries, int64_t q,
                 int64_t k, int64_t* out_idx, float* out_score) {
    if (k < 1) throw std::invalid_argument("topk_cosine: k must be >= 1");
    if (d < 1) throw std::invalid_argument("topk_cosine: embedding dimension must be >= 1");
    const int64_t kk = std::min(k, n);
    if (kk == 0 || q == 0) return;

    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(q, kScoreBudget / n));
    std::vector<float> scores(static_cast<size_t>(chunk * n));
    const int64_t nblocks = (n + kBlockRows - 1) / kBlockRows;
    int out_of_memory = 0;  // set when a selection buffer could not be allocated

    for (int64_t q0 = 0; q0 < q; q0 += chunk) {
        const int64_t nq = std::min(chunk, q - q0);
        const float* qs = queries + q0 * d;
        float* sc = scores.data();
        const bool parallel = nq * n * d >= kParallelWork;
        (void)parallel;
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
#endif
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t r0 = b * kBlockRows;
            const int64_t nr = std::min(kBlockRows, n - r0);
            score_block(qs, nq, d, gallery + r0 * d, nr, sc + r0, n);
        }
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel if (parallel && nq > 1)
#endif
        {
            std::vector<Hit> hits;
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t i = 0; i < nq; ++i) {
                try {  // an exception must not escape an OpenMP region
                    select_topk(sc + i * n, n, kk, hits, out_idx + (q0 + i) * kk,
                                out_score + (q0 + i) * kk);
                } catch (...) {
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp atomic write
#endif
                    out_of_memory = 1;
                }
            }
        }
        if (out_of_memory) throw std::bad_alloc();
    }
}

}  // namespace lt
