// Contextual attention on CUDA: geometry, index maps and the launch plan.
//
// Shared by the host launcher, the device kernels (ca_kernels.cuh), the TensorRT plugin and the CPU
// emulation used by the tests (tests/cuda_emu/), so everything here is plain C++ marked LT_HD.
// The math is kernels/contextual_attention/README.md; the kernel design is in
// kernels/contextual_attention/cuda/README.md.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__) || defined(LT_CUDA_EMULATION)
#define LT_HD __host__ __device__
#else
#define LT_HD
#endif

namespace lt {
namespace ca {

//! Largest foreground grid (H/rate * W/rate) the CUDA kernel accepts: the per-block source
//! bitmap lives in shared memory (Pf/32 words + a prefix count per word).
constexpr int kMaxForeground = 16384;
//! Largest fuse half-width (fuse_k = 2*half + 1) the kernel accepts.
constexpr int kMaxFuseHalf = 3;

// Kernel launch constants (fixed at compile time; the planner below sizes tiles around them).
constexpr int kThreads = 256;                  // threads per block, every kernel
constexpr int kRT = 128, kCT = 32, kBK = 16;   // score GEMM macro tile (rows x cols) and K chunk
constexpr int kMP = 64, kNP = 256, kPK = 16;   // paste GEMM: max owned positions, max outputs, K chunk

//! Every size of one call, derived once on the host and passed to the kernels by value.
struct Geometry {
    int B, C, Hf, Wf, Hb, Wb, mask_batch;  // mask_batch: 0 (no mask), 1 or B
    int ks, st, rate, kr;                  // matching patch, bg patch stride, downscale, raw patch
    int half, nterms;                      // fuse half-width (0 without fuse), (2*half+1)^2 terms
    int hf, wf, Pf;                        // downscaled foreground grid, Pf = hf*wf
    int hb, wb;                            // downscaled background
    int gh, gw, L;                         // background patch grid, L = gh*gw
    int fpt, fpl, pt, pl, rpt, rpl, ct, cl;  // SAME pads (fg patches, bg patches, raw patches, crop)
    int hfp, wfp, hbp, wbp;                // padded downscaled maps (zero borders: no bounds checks)
    int K;                                 // C*ks*ks, the score GEMM depth
    int bw_lo, nbw, ntw, nseq;             // column sequence of the score ring (see ring_* below)
    int fold;                              // 1 when stride == 1: paste through box-summed attention
    int f16;                               // storage: 1 float16, 0 float32 (arithmetic: float32)
    float scale;                           // softmax_scale
};

//! Tile sizes of the two main kernels, chosen by plan() for one device.
struct Plan {
    // pass 1 (softmax statistics): tiles of t1y x t1x foreground positions
    int t1y, t1x, n1y, n1x, e1, tq1, w1, nac1;
    // pass 2 (paste): tiles of t2y x t2x output owners on the (hf+1) x (wf+1) grid
    int t2y, t2x, n2y, n2x, e2, nar2, tq2, w2, nac2, cc, nchunks;
    std::size_t smem1, smem2;
};

LT_HD inline int imin(int a, int b) { return a < b ? a : b; }
LT_HD inline int imax(int a, int b) { return a > b ? a : b; }

//! TF "SAME" padding before the first window (kernels/contextual_attention/README.md).
LT_HD inline int same_pad_before(int size, int k, int s) {
    const int n_out = (size + s - 1) / s;
    const int total = imax((n_out - 1) * s + k - size, 0);
    return total / 2;
}

//! Source of fuse term t for position p of a rows x cols grid (flat, row-major), or -1 when the
//! term is dropped (README step 4): t = (d2 + half) * (2*half+1) + (d1 + half); the d2 shift moves
//! along the column-major flat index (wrapping into the next / previous column), the d1 shift
//! along the row-major flat index (wrapping into the next / previous row). *kind (optional) is the
//! column change of the d2 shift: 0, or +1 / -1 when it wrapped (|kind| <= 1 while half < rows).
LT_HD inline int fuse_source(int p, int t, int rows, int cols, int half, int* kind) {
    const int n = rows * cols, w = 2 * half + 1;
    const int d2 = t / w - half, d1 = t % w - half;
    const int y = p / cols, x = p - y * cols;
    const int v = x * rows + y + d2;  // column-major index after the d2 shift
    if (v < 0 || v >= n) return -1;
    const int xx = v / rows, yy = v - xx * rows;
    const int s = yy * cols + xx + d1;
    if (s < 0 || s >= n) return -1;
    if (kind) *kind = xx - x;
    return s;
}

// ---- the score ring ------------------------------------------------------------------------------
// Pass 1 and 2 sweep the background grid row band by row band. The fused score of column q needs
// raw scores of columns within +-(half*gw + half) of q, plus, for the first / last `half` rows,
// columns of the last / first rows (the column-major wrap). The sweep therefore computes raw score
// columns in the order
//     [BW: flat bw_lo .. L-1] [main: flat 0 .. L-1] [TW: flat 0 .. ntw-1]
// ("sequence" positions 0 .. nseq-1), and every band needs one contiguous window of it; windows
// only move forward, so a ring of W >= the largest window holds them (slot = position % W).

//! Sequence position of the raw score column of source s (flat) reached with wrap kind `kind`.
LT_HD inline int ring_position(const Geometry& g, int s, int kind) {
    return kind == 0 ? g.nbw + s : (kind > 0 ? g.nbw + g.L + s : s - g.bw_lo);
}

//! Flat background column of sequence position e.
LT_HD inline int ring_flat(const Geometry& g, int e) {
    return e < g.nbw ? g.bw_lo + e : (e < g.nbw + g.L ? e - g.nbw : e - g.nbw - g.L);
}

//! The window [lo, hi) of sequence positions holding every source of the columns of background
//! rows [ya, yb).
LT_HD inline void ring_window(const Geometry& g, int ya, int yb, int* lo, int* hi) {
    const int h = g.half;
    const int a = imax((ya - h) * g.gw - h, 0);
    const int b = imin((yb + h) * g.gw + h, g.L);
    *lo = (h > 0 && ya < h) ? 0 : g.nbw + a;
    *hi = (h > 0 && yb > g.gh - h) ? g.nseq : g.nbw + b;
}

//! Background rows [ya, yb) of the attention columns that step `s` of pass 2 needs. With fold,
//! step s covers output-grid rows [s*tq, s*tq + tq) of the (gh+1)-row paste grid and needs the
//! attention of rows Y'-1 and Y'; without fold it covers patch rows [s*tq, s*tq + tq).
LT_HD inline void pass2_rows(const Geometry& g, int s, int tq, int* ya, int* yb, int* y0, int* y1) {
    if (g.fold) {
        *y0 = s * tq;
        *y1 = imin(*y0 + tq, g.gh + 1);
        *ya = imax(*y0 - 1, 0);
        *yb = imin(*y1, g.gh);
    } else {
        *y0 = s * tq;
        *y1 = imin(*y0 + tq, g.gh);
        *ya = *y0;
        *yb = *y1;
    }
}

LT_HD inline int pass2_steps(const Geometry& g, int tq) {
    return g.fold ? (g.gh + 1 + tq - 1) / tq : (g.gh + tq - 1) / tq;
}

//! Byte offsets of the workspace buffers (each 256-byte aligned) and the total.
struct WorkspaceLayout {
    std::size_t fdp, bdp, inv, valid, row_m, row_l, total;
};

inline std::size_t align256(std::size_t v) { return (v + 255) / 256 * 256; }

inline WorkspaceLayout workspace_layout(const Geometry& g, std::size_t elem_size) {
    WorkspaceLayout w{};
    const std::size_t B = static_cast<std::size_t>(g.B), C = static_cast<std::size_t>(g.C);
    std::size_t off = 0;
    w.fdp = off;
    off = align256(off + B * C * g.hfp * g.wfp * elem_size);
    w.bdp = off;
    off = align256(off + B * C * g.hbp * g.wbp * elem_size);
    w.inv = off;
    off = align256(off + B * g.L * sizeof(float));
    w.valid = off;
    off = align256(off + B * g.L);
    w.row_m = off;
    off = align256(off + B * g.Pf * sizeof(float));
    w.row_l = off;
    off = align256(off + B * g.Pf * sizeof(float));
    w.total = off;
    return w;
}

}  // namespace ca
}  // namespace lt

namespace lt {
namespace ca {

//! Shared-memory layout of one block, in 4-byte words from the start of dynamic shared memory.
//! Every region starts on a 16-byte boundary. Used by the planner (sizes) and the kernels (carving).
struct SmemLayout {
    int bits, prefix, ext, srcloc, row_a, row_b, slot, vflag, ring, abuf, stage, total;
};

LT_HD inline int round4(int v) { return (v + 3) / 4 * 4; }

//! pass = 1 (statistics) or 2 (paste); e = max ext rows, nar = max attention rows, nac = max
//! attention columns per step, w = ring width.
LT_HD inline SmemLayout smem_layout(const Geometry& g, int pass, int e, int nar, int nac, int w) {
    SmemLayout s{};
    const int words = (g.Pf + 31) / 32;
    int off = 0;
    s.bits = off;   off += round4(words);
    s.prefix = off; off += round4(words + 1);
    s.ext = off;    off += round4(e);
    s.srcloc = off; off += round4(nar * g.nterms);
    s.row_a = off;  off += round4(nar);
    s.row_b = off;  off += round4(nar);
    s.slot = off;   off += round4(nac * g.nterms);
    s.vflag = off;  off += round4(nac);
    s.ring = off;   off += round4(e * w);
    s.abuf = off;   off += pass == 2 ? round4(nar * nac) : 0;
    s.stage = off;
    const int score_stage = kBK * (kRT + kCT);
    const int paste_stage = kPK * (kMP + kNP);
    off += pass == 2 ? (score_stage > paste_stage ? score_stage : paste_stage) : score_stage;
    s.total = off;
    return s;
}

}  // namespace ca
}  // namespace lt
