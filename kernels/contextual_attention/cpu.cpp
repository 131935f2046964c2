// Contextual attention, fused CPU kernel (float32 in/out). See contextual_attention.h and
// kernels/contextual_attention/README.md for the math; step numbers below follow the README.
//
// Per sample: downscale + extract and normalise the background patches once (W, K x L), extract the
// foreground patches (Pf x K), score GEMM S = F @ W, fuse and masked softmax, all in float64 (the
// logits reach ~1e3 at C=128 and feed exp(): float32 scores cost ~2e-5 of attention there, over
// the 1e-5 bound), then the paste GEMM P = A @ R (Pf x C*kr*kr, float32) against the raw 2*rate
// patches, overlap-add into y, / 4. The GEMMs use a small register-tiled micro-kernel compiled for
// AVX-512 / AVX2 / baseline (cpu_dispatch.h); OpenMP parallelises every stage inside a sample.
#include "contextual_attention/contextual_attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_dispatch.h"

#if defined(LOOKTHROUGH_WITH_OPENMP)
#include <omp.h>
#endif

namespace lt {
namespace {

constexpr double kNormEps = 1e-4;  // reference.NORM_EPS
constexpr int64_t kMR = 4;         // micro-tile rows
constexpr int64_t kNT = 32;        // padding of L and C*kr*kr (multiple of both tile widths)
// Work (multiply-adds) below which a stage runs on one thread.
constexpr int64_t kParallelWork = 1 << 15;

struct Pads {
    int64_t before, after, n_out;
};

// TF "SAME" padding (reference.same_pads).
Pads same_pads(int64_t size, int64_t k, int64_t s) {
    const int64_t n_out = (size + s - 1) / s;
    const int64_t total = std::max<int64_t>((n_out - 1) * s + k - size, 0);
    return {total / 2, total - total / 2, n_out};
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// C[0:kMR, 0:NT] = A[0:kMR, 0:K] @ B[0:K, 0:NT]; row strides lda, ldb, ldc.
// skip_zero: skip k where the kMR values of A are all 0 (sparse attention rows).
template <typename T, int64_t NT>
LT_ALWAYS_INLINE void micro_tile_impl(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
                                      T* C, int64_t ldc, bool skip_zero) {
    T acc[kMR][NT] = {};
    const T* a0 = A;
    const T* a1 = A + lda;
    const T* a2 = A + 2 * lda;
    const T* a3 = A + 3 * lda;
    for (int64_t k = 0; k < K; ++k) {
        const T x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
        if (skip_zero && x0 == T(0) && x1 == T(0) && x2 == T(0) && x3 == T(0)) continue;
        const T* br = B + k * ldb;
        for (int64_t j = 0; j < NT; ++j) {
            const T bv = br[j];
            acc[0][j] += x0 * bv;
            acc[1][j] += x1 * bv;
            acc[2][j] += x2 * bv;
            acc[3][j] += x3 * bv;
        }
    }
    for (int64_t r = 0; r < kMR; ++r)
        for (int64_t j = 0; j < NT; ++j) C[r * ldc + j] = acc[r][j];
}

constexpr int64_t kNTf = 32;  // float tile width
constexpr int64_t kNTd = 16;  // double tile width

LT_TARGET_CLONES
void micro_tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                int64_t ldc, bool skip_zero) {
    micro_tile_impl<float, kNTf>(K, A, lda, B, ldb, C, ldc, skip_zero);
}

LT_TARGET_CLONES
void micro_tile(int64_t K, const double* A, int64_t lda, const double* B, int64_t ldb, double* C,
                int64_t ldc, bool skip_zero) {
    micro_tile_impl<double, kNTd>(K, A, lda, B, ldb, C, ldc, skip_zero);
}

// C (M x N) = A (M x K) @ B (K x N), row-major; M % kMR == 0, N % NT == 0.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
          T* C, int64_t ldc, bool skip_zero) {
    constexpr int64_t NT = sizeof(T) == 4 ? kNTf : kNTd;
    const int64_t mt = M / kMR, nt = N / NT, tiles = mt * nt;
    const bool par = M * N * K > kParallelWork;
    (void)par;
    // Column-tile major: consecutive tiles share the (K x NT) panel of B, which stays in cache.
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(dynamic, 2) if (par)
#endif
    for (int64_t t = 0; t < tiles; ++t) {
        const int64_t jt = t / mt, it = t % mt;
        micro_tile(K, A + it * kMR * lda, lda, B + jt * NT, ldb, C + it * kMR * ldc + jt * NT,
                   ldc, skip_zero);
    }
}

struct Geometry {
    int64_t C, Hf, Wf, Hb, Wb;
    int64_t hf, wf, hb, wb, gh, gw, L, Pf;
    int64_t ks, st, rate, kr, half;
    int64_t pt, pl;    // background patch pads (downscaled map)
    int64_t fpt, fpl;  // foreground patch pads
    int64_t rpt, rpl;  // raw patch pads (full resolution)
    int64_t ct, cl;    // conv2d_transpose SAME crop
    int64_t K, K2;     // C*ks*ks, C*kr*kr
    int64_t Pfp, Lp, K2p;  // padded sizes for the GEMM tiles
};

Geometry geometry(int64_t C, int64_t Hf, int64_t Wf, int64_t Hb, int64_t Wb,
                  const ContextualAttentionParams& prm) {
    Geometry g{};
    g.C = C, g.Hf = Hf, g.Wf = Wf, g.Hb = Hb, g.Wb = Wb;
    g.ks = prm.ksize, g.st = prm.stride, g.rate = prm.rate, g.kr = 2 * int64_t(prm.rate);
    g.half = prm.fuse_k / 2;
    g.hf = Hf / g.rate, g.wf = Wf / g.rate, g.hb = Hb / g.rate, g.wb = Wb / g.rate;
    const Pads ph = same_pads(g.hb, g.ks, g.st), pw = same_pads(g.wb, g.ks, g.st);
    g.pt = ph.before, g.pl = pw.before, g.gh = ph.n_out, g.gw = pw.n_out;
    g.fpt = same_pads(g.hf, g.ks, 1).before, g.fpl = same_pads(g.wf, g.ks, 1).before;
    g.rpt = same_pads(Hb, g.kr, g.rate * g.st).before;
    g.rpl = same_pads(Wb, g.kr, g.rate * g.st).before;
    g.ct = same_pads(Hf, g.kr, g.rate).before, g.cl = same_pads(Wf, g.kr, g.rate).before;
    g.L = g.gh * g.gw, g.Pf = g.hf * g.wf;
    g.K = C * g.ks * g.ks, g.K2 = C * g.kr * g.kr;
    g.Pfp = round_up(g.Pf, kMR), g.Lp = round_up(g.L, kNT), g.K2p = round_up(g.K2, kNT);
    return g;
}

// One sample. Workspaces are owned by the caller (reused across samples).
struct Work {
    std::vector<double> fu, w, s;
    std::vector<float> a, raw, p;
    std::vector<double> s1, z;
    std::vector<unsigned char> hole, valid;
    std::vector<int64_t> pcol, pinv, qcol, qinv;
};

void run_sample(const Geometry& g, const ContextualAttentionParams& prm, const float* f,
                const float* b, const float* mask, float* y, float* att, Work& wk) {
    const int64_t C = g.C, Hf = g.Hf, Wf = g.Wf, Hb = g.Hb, Wb = g.Wb;
    const int64_t hf = g.hf, wf = g.wf, hb = g.hb, wb = g.wb, gw = g.gw, L = g.L, Pf = g.Pf;
    const int64_t ks = g.ks, st = g.st, rate = g.rate, kr = g.kr, K = g.K, K2 = g.K2;
    const int64_t Lp = g.Lp, K2p = g.K2p, Pfp = g.Pfp;
    const bool par_L = L * K > kParallelWork;
    const bool par_P = Pf * std::max(K, L) > kParallelWork;
    (void)par_L;
    (void)par_P;

    // 1. + 2. downscaled hole map, background patches (K x Lp, normalised), validity.
    std::fill(wk.hole.begin(), wk.hole.end(), 0);
    if (mask)
        for (int64_t yy = 0; yy < hb; ++yy)
            for (int64_t xx = 0; xx < wb; ++xx)
                wk.hole[yy * wb + xx] = mask[(yy * rate) * Wb + xx * rate] != 0.0f;
    double* w = wk.w.data();
    std::fill(wk.w.begin(), wk.w.end(), 0.0);
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_L)
#endif
    for (int64_t q = 0; q < L; ++q) {
        const int64_t Y = q / gw, X = q % gw;
        double n2 = 0.0;
        bool any_hole = false;
        for (int64_t i = 0; i < ks; ++i) {
            const int64_t yy = Y * st + i - g.pt;
            if (yy < 0 || yy >= hb) continue;
            for (int64_t j = 0; j < ks; ++j) {
                const int64_t xx = X * st + j - g.pl;
                if (xx < 0 || xx >= wb) continue;
                any_hole = any_hole || wk.hole[yy * wb + xx];
                const float* src = b + (yy * rate) * Wb + xx * rate;
                for (int64_t c = 0; c < C; ++c) {
                    const double v = src[c * Hb * Wb];
                    n2 += v * v;
                }
            }
        }
        wk.valid[q] = !any_hole;
        const double inv = 1.0 / std::max(std::sqrt(n2), kNormEps);
        for (int64_t i = 0; i < ks; ++i) {
            const int64_t yy = Y * st + i - g.pt;
            if (yy < 0 || yy >= hb) continue;
            for (int64_t j = 0; j < ks; ++j) {
                const int64_t xx = X * st + j - g.pl;
                if (xx < 0 || xx >= wb) continue;
                const float* src = b + (yy * rate) * Wb + xx * rate;
                for (int64_t c = 0; c < C; ++c)
                    w[((c * ks + i) * ks + j) * Lp + q] = double(src[c * Hb * Wb]) * inv;
            }
        }
    }

    // 3. foreground patches (Pfp x K, zero rows beyond Pf) and the score GEMM.
    double* fu = wk.fu.data();
    std::fill(wk.fu.begin(), wk.fu.end(), 0.0);
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_P)
#endif
    for (int64_t p = 0; p < Pf; ++p) {
        const int64_t py = p / wf, px = p % wf;
        double* row = fu + p * K;
        for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < ks; ++i) {
                const int64_t yy = py + i - g.fpt;
                if (yy < 0 || yy >= hf) continue;
                for (int64_t j = 0; j < ks; ++j) {
                    const int64_t xx = px + j - g.fpl;
                    if (xx < 0 || xx >= wf) continue;
                    row[(c * ks + i) * ks + j] = f[(c * Hf + yy * rate) * Wf + xx * rate];
                }
            }
    }
    double* s = wk.s.data();
    gemm(Pfp, Lp, K, fu, K, w, Lp, s, Lp, false);

    // 4. fuse (float64): diagonal sums in row-major, then in column-major flat indices.
    double* z = wk.z.data();
    const int64_t half = prm.fuse ? g.half : 0;
    if (half > 0) {
        double* s1 = wk.s1.data();
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_P)
#endif
        for (int64_t p = 0; p < Pf; ++p)
            for (int64_t q = 0; q < L; ++q) {
                double acc = 0.0;
                for (int64_t d = -half; d <= half; ++d)
                    if (p + d >= 0 && p + d < Pf && q + d >= 0 && q + d < L)
                        acc += s[(p + d) * Lp + q + d];
                s1[p * L + q] = acc;
            }
        const int64_t* pcol = wk.pcol.data();
        const int64_t* pinv = wk.pinv.data();
        const int64_t* qcol = wk.qcol.data();
        const int64_t* qinv = wk.qinv.data();
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_P)
#endif
        for (int64_t p = 0; p < Pf; ++p) {
            const int64_t pc = pcol[p];
            for (int64_t q = 0; q < L; ++q) {
                const int64_t qc = qcol[q];
                double acc = 0.0;
                for (int64_t d = -half; d <= half; ++d)
                    if (pc + d >= 0 && pc + d < Pf && qc + d >= 0 && qc + d < L)
                        acc += s1[pinv[pc + d] * L + qinv[qc + d]];
                z[p * L + q] = acc;
            }
        }
    } else {
        for (int64_t p = 0; p < Pf; ++p)
            for (int64_t q = 0; q < L; ++q) z[p * L + q] = s[p * Lp + q];
    }

    // 5. masked softmax per foreground location (float64), attention out (L x Pf, transposed).
    float* a = wk.a.data();
    std::fill(wk.a.begin(), wk.a.end(), 0.0f);
    const unsigned char* valid = wk.valid.data();
    const double scale = prm.softmax_scale;
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_P)
#endif
    for (int64_t p = 0; p < Pf; ++p) {
        double* zr = z + p * L;
        double m = -INFINITY;
        for (int64_t q = 0; q < L; ++q)
            if (valid[q]) m = std::max(m, scale * zr[q]);
        float* ar = a + p * Lp;
        if (m == -INFINITY) continue;  // no valid patch: the row stays 0
        double den = 0.0;
        for (int64_t q = 0; q < L; ++q) {
            const double e = valid[q] ? std::exp(scale * zr[q] - m) : 0.0;
            zr[q] = e;
            den += e;
        }
        const double inv = 1.0 / den;  // den >= 1 (the max term is exp(0))
        for (int64_t q = 0; q < L; ++q) ar[q] = static_cast<float>(zr[q] * inv);
    }
    if (att)
        for (int64_t q = 0; q < L; ++q)
            for (int64_t p = 0; p < Pf; ++p) att[q * Pf + p] = a[p * Lp + q];

    // 6. raw patches (L x K2p, full resolution, zero padded).
    float* raw = wk.raw.data();
    std::fill(wk.raw.begin(), wk.raw.end(), 0.0f);
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_L)
#endif
    for (int64_t q = 0; q < L; ++q) {
        const int64_t Y = q / gw, X = q % gw;
        float* row = raw + q * K2p;
        for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < kr; ++i) {
                const int64_t yy = Y * rate * st + i - g.rpt;
                if (yy < 0 || yy >= Hb) continue;
                for (int64_t j = 0; j < kr; ++j) {
                    const int64_t xx = X * rate * st + j - g.rpl;
                    if (xx < 0 || xx >= Wb) continue;
                    row[(c * kr + i) * kr + j] = b[(c * Hb + yy) * Wb + xx];
                }
            }
    }

    // 7. paste: P = A @ R (Pfp x K2p), overlap-add at (y*rate - ct, x*rate - cl), / 4.
    float* pp = wk.p.data();
    gemm(Pfp, K2p, L, a, Lp, raw, K2p, pp, K2p, true);
    std::fill(y, y + C * Hf * Wf, 0.0f);
    const bool par_C = C * Pf * kr * kr > kParallelWork;
    (void)par_C;
#if defined(LOOKTHROUGH_WITH_OPENMP)
#pragma omp parallel for schedule(static) if (par_C)
#endif
    for (int64_t c = 0; c < C; ++c) {
        float* yc = y + c * Hf * Wf;
        for (int64_t p = 0; p < Pf; ++p) {
            const int64_t py = p / wf, px = p % wf;
            const float* src = pp + p * K2p + c * kr * kr;
            for (int64_t i = 0; i < kr; ++i) {
                const int64_t oy = py * rate + i - g.ct;
                if (oy < 0 || oy >= Hf) continue;
                for (int64_t j = 0; j < kr; ++j) {
                    const int64_t ox = px * rate + j - g.cl;
                    if (ox < 0 || ox >= Wf) continue;
                    yc[oy * Wf + ox] += src[i * kr + j];
                }
            }
        }
        for (int64_t i = 0; i < Hf * Wf; ++i) yc[i] *= 0.25f;
    }
    (void)Pfp;
}

void fail(const std::string& msg) { throw std::invalid_argument(msg); }

}  // namespace

ContextualAttentionShape contextual_attention_shape(int64_t C, int64_t Hf, int64_t Wf, int64_t Hb,
                                                    int64_t Wb,
                                                    const ContextualAttentionParams& prm) {
    if (prm.ksize < 1) fail("ksize must be >= 1, got " + std::to_string(prm.ksize));
    if (prm.stride < 1) fail("stride must be >= 1, got " + std::to_string(prm.stride));
    if (prm.rate < 1) fail("rate must be >= 1, got " + std::to_string(prm.rate));
    if (prm.fuse_k < 1 || prm.fuse_k % 2 != 1)
        fail("fuse_k must be odd and >= 1, got " + std::to_string(prm.fuse_k));
    if (!std::isfinite(prm.softmax_scale)) fail("softmax_scale must be finite");
    if (C < 1) fail("the channel count C must be >= 1");
    const int64_t sizes[4] = {Hf, Wf, Hb, Wb};
    for (int64_t v : sizes)
        if (v < 1 || v % prm.rate != 0)
            fail("spatial sizes must be positive multiples of rate=" + std::to_string(prm.rate) +
                 "; got f (" + std::to_string(Hf) + ", " + std::to_string(Wf) + "), b (" +
                 std::to_string(Hb) + ", " + std::to_string(Wb) + ")");
    if (Hf > (1 << 16) || Wf > (1 << 16) || Hb > (1 << 16) || Wb > (1 << 16) || C > (1 << 20))
        fail("input too large");
    const Geometry g = geometry(C, Hf, Wf, Hb, Wb, prm);
    // Workspaces: Pf x L (float + 2 double), Pf x C*kr^2, L x C*kr^2, ... keep them addressable.
    const double ws = double(g.Pfp) * g.Lp * 20 + double(g.Pfp + g.Lp) * (g.K2p + g.K) * 4;
    if (ws > double(int64_t(1) << 36))
        fail("contextual attention workspace too large (" + std::to_string(int64_t(ws)) +
             " bytes); use smaller feature maps");
    ContextualAttentionShape out;
    out.hf = g.hf, out.wf = g.wf, out.gh = g.gh, out.gw = g.gw;
    return out;
}

void contextual_attention(const float* f, const float* b, const float* mask, int64_t mask_batch,
                          int64_t B, int64_t C, int64_t Hf, int64_t Wf, int64_t Hb, int64_t Wb,
                          const ContextualAttentionParams& prm, float* y, float* attention) {
    contextual_attention_shape(C, Hf, Wf, Hb, Wb, prm);
    if (B < 0) fail("batch size must be >= 0");
    if (mask && mask_batch != 1 && mask_batch != B)
        fail("mask batch must be 1 or B=" + std::to_string(B) + ", got " +
             std::to_string(mask_batch));
    if (B == 0) return;
    const Geometry g = geometry(C, Hf, Wf, Hb, Wb, prm);
    Work wk;
    wk.fu.resize(g.Pfp * g.K);
    wk.w.resize(g.K * g.Lp);
    wk.s.resize(g.Pfp * g.Lp);
    wk.a.resize(g.Pfp * g.Lp);
    wk.raw.resize(g.L * g.K2p);
    wk.p.resize(g.Pfp * g.K2p);
    wk.z.resize(g.Pf * g.L);
    if (prm.fuse && g.half > 0) wk.s1.resize(g.Pf * g.L);
    wk.hole.resize(g.hb * g.wb);
    wk.valid.resize(g.L);
    // Row-major <-> column-major flat indices for the second fuse pass.
    wk.pcol.resize(g.Pf), wk.pinv.resize(g.Pf), wk.qcol.resize(g.L), wk.qinv.resize(g.L);
    for (int64_t p = 0; p < g.Pf; ++p) {
        wk.pcol[p] = (p % g.wf) * g.hf + p / g.wf;
        wk.pinv[p] = (p % g.hf) * g.wf + p / g.hf;
    }
    for (int64_t q = 0; q < g.L; ++q) {
        wk.qcol[q] = (q % g.gw) * g.gh + q / g.gw;
        wk.qinv[q] = (q % g.gh) * g.gw + q / g.gh;
    }
    for (int64_t n = 0; n < B; ++n) {
        const float* mn = mask ? mask + (mask_batch == 1 ? 0 : n) * Hb * Wb : nullptr;
        run_sample(g, prm, f + n * C * Hf * Wf, b + n * C * Hb * Wb, mn, y + n * C * Hf * Wf,
                   attention ? attention + n * g.L * g.Pf : nullptr, wk);
    }
}

bool contextual_attention_uses_openmp() {
#if defined(LOOKTHROUGH_WITH_OPENMP)
    return true;
#else
    return false;
#endif
}

}  // namespace lt
