// Contextual attention forward on CUDA: the kernels and their host launcher.
//
// Included by contextual_attention.cu (nvcc) and, for the tests, by the CPU emulation in
// tests/cuda_emu/ (which defines LT_CUDA_EMULATION and provides the CUDA names used here), so this
// file only uses: __global__/__device__, threadIdx/blockIdx, __syncthreads, atomicOr, __popc,
// __ffs, __half conversions, expf/sqrt, dynamic shared memory through LT_DYNAMIC_SMEM and launches
// through LT_LAUNCH.
//
// Design (kernels/contextual_attention/cuda/README.md has the long version):
//   prep      padded, downscaled copies of f and b (no bounds checks in the GEMM loads), and per
//             background patch its validity and 1 / max(||patch||, 1e-4).
//   pass 1    per (sample, tile of foreground positions): stream the background grid band by
//             band, compute raw scores S = F . Wt for the tile's fuse sources into a shared-memory
//             ring, fuse on the fly (sum of fuse_k^2 ring entries), keep an online max / sum-exp
//             per foreground position over the valid patches -> row max m and sum l (global).
//   pass 2    per (sample, tile of output owners, channel chunk): the same sweep recomputes the
//             fused scores, A = exp(scale*z - m) / l exactly (0 for invalid patches and for rows
//             without any valid patch), and pastes. With stride 1 the 2x2 overlap-add is folded
//             into the attention (A~[p, q'] = sum_d A[p-d, q'-d]), so each output pixel is one
//             dot product over q' (4x fewer multiply-adds than pasting 2r x 2r patches); each
//             block owns its output pixels, so there are no atomics and the result is
//             deterministic.
// The Pf x L score / attention matrix never exists in global memory (only when the caller asks
// for the attention map, which pass 2 then writes).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "contextual_attention/cuda/ca_cuda.h"
#include "contextual_attention/cuda/geometry.h"
#include "contextual_attention/cuda/plan.h"

#ifndef LT_DYNAMIC_SMEM
#define LT_DYNAMIC_SMEM(name)                                   \
    extern __shared__ __align__(16) unsigned char lt_smem_raw[]; \
    float* name = reinterpret_cast<float*>(lt_smem_raw)
#endif
#ifndef LT_LAUNCH
#define LT_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

namespace lt {
namespace ca {

// ---------------------------------------------------------------------------------------------
// element access: storage float32 or float16 (a runtime flag, uniform across the grid, so the
// kernels are compiled once; the branch sits on loads that feed 16+ multiply-adds each)
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float ld(const void* p, int64_t i, int f16) {
    return f16 ? __half2float(static_cast<const __half*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void st(void* p, int64_t i, float v, int f16) {
    if (f16)
        static_cast<__half*>(p)[i] = __float2half_rn(v);
    else
        static_cast<float*>(p)[i] = v;
}

struct F4 {
    float x, y, z, w;
};

// ---------------------------------------------------------------------------------------------
// prep kernels
// ---------------------------------------------------------------------------------------------
// dst (B, C, hp, wp): dst[n, c, yy, xx] = src[n, c, (yy-top)*rate, (xx-left)*rate] inside the
// downscaled map (hd x wd), 0 outside.
__global__ void __launch_bounds__(kThreads)
    pad_downscale_kernel(const void* __restrict__ src, void* __restrict__ dst, int64_t planes,
                         int H, int W, int rate, int hd, int wd, int hp, int wp, int top, int left,
                         int f16) {
    const int64_t total = planes * hp * wp;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * kThreads) {
        const int xx = static_cast<int>(i % wp);
        const int yy = static_cast<int>((i / wp) % hp);
        const int64_t plane = i / (static_cast<int64_t>(hp) * wp);
        const int y = yy - top, x = xx - left;
        float v = 0.0f;
        if (y >= 0 && y < hd && x >= 0 && x < wd)
            v = ld(src, (plane * H + static_cast<int64_t>(y) * rate) * W + static_cast<int64_t>(x) * rate,
                   f16);
        st(dst, i, v, f16);
    }
}

// Per (sample, background patch): inv[n, q] = 1 / max(||patch||_2, 1e-4) (norm over the stored
// values, accumulated in double), valid[n, q] = no hole pixel in the patch (README step 2).
__global__ void __launch_bounds__(kThreads)
    patch_stats_kernel(Geometry g, const void* __restrict__ bdp, const void* __restrict__ mask,
                       float* __restrict__ inv, unsigned char* __restrict__ valid) {
    const int64_t total = static_cast<int64_t>(g.B) * g.L;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * kThreads) {
        const int n = static_cast<int>(i / g.L), q = static_cast<int>(i % g.L);
        const int Y = q / g.gw, X = q - (q / g.gw) * g.gw;
        const int64_t plane = static_cast<int64_t>(g.hbp) * g.wbp;
        const int64_t base = static_cast<int64_t>(n) * g.C * plane +
                             static_cast<int64_t>(Y) * g.st * g.wbp + static_cast<int64_t>(X) * g.st;
        double ss = 0.0;
        for (int c = 0; c < g.C; ++c)
            for (int a = 0; a < g.ks; ++a)
                for (int bj = 0; bj < g.ks; ++bj) {
                    const double v = ld(bdp, base + c * plane + a * g.wbp + bj, g.f16);
                    ss += v * v;
                }
        const double nrm = sqrt(ss);
        inv[i] = static_cast<float>(1.0 / (nrm > 1e-4 ? nrm : 1e-4));
        unsigned char ok = 1;
        if (g.mask_batch > 0) {
            const int64_t m0 = static_cast<int64_t>(g.mask_batch == 1 ? 0 : n) * g.Hb * g.Wb;
            for (int a = 0; a < g.ks && ok; ++a) {
                const int yy = Y * g.st + a - g.pt;
                if (yy < 0 || yy >= g.hb) continue;
                for (int bj = 0; bj < g.ks; ++bj) {
                    const int xx = X * g.st + bj - g.pl;
                    if (xx < 0 || xx >= g.wb) continue;
                    if (ld(mask, m0 + static_cast<int64_t>(yy) * g.rate * g.Wb + xx * g.rate,
                           g.f16) != 0.0f) {
                        ok = 0;
                        break;
                    }
                }
            }
        }
        valid[i] = ok;
    }
}

// ---------------------------------------------------------------------------------------------
// block building blocks (every thread of the block calls them; they synchronise internally)
// ---------------------------------------------------------------------------------------------

// The raw-score rows a block needs: every fuse source of the foreground rectangle
// [ay0, ay1) x [ax0, ax1). Marks them in a bitmap, ranks them (prefix popcounts), lists them in
// `ext` (ascending flat index) and fills srcloc[ar * nterms + t] = rank of the source of term t of
// rectangle position ar (-1 when the term is dropped). Returns the number of rows.
__device__ inline int build_sources(const Geometry& g, int ay0, int ay1, int ax0, int ax1,
                                    unsigned* bits, int* prefix, int* ext, int* srcloc) {
    const int tid = threadIdx.x, T = g.nterms, aw = ax1 - ax0;
    const int words = (g.Pf + 31) >> 5, nA = (ay1 - ay0) * aw;
    for (int i = tid; i < words; i += kThreads) bits[i] = 0u;
    __syncthreads();
    for (int e = tid; e < nA * T; e += kThreads) {
        const int ar = e / T, t = e - (e / T) * T;
        const int p = (ay0 + ar / aw) * g.wf + ax0 + ar % aw;
        const int s = fuse_source(p, t, g.hf, g.wf, g.half, nullptr);
        if (s >= 0) atomicOr(&bits[s >> 5], 1u << (s & 31));
    }
    __syncthreads();
    if (tid == 0) {
        int run = 0;
        for (int w = 0; w < words; ++w) {
            prefix[w] = run;
            run += __popc(bits[w]);
        }
        prefix[words] = run;
    }
    __syncthreads();
    for (int w = tid; w < words; w += kThreads) {
        unsigned m = bits[w];
        int r = prefix[w];
        while (m) {
            ext[r++] = w * 32 + __ffs(m) - 1;
            m &= m - 1u;
        }
    }
    for (int e = tid; e < nA * T; e += kThreads) {
        const int ar = e / T, t = e - (e / T) * T;
        const int p = (ay0 + ar / aw) * g.wf + ax0 + ar % aw;
        const int s = fuse_source(p, t, g.hf, g.wf, g.half, nullptr);
        srcloc[e] = s < 0 ? -1
                          : prefix[s >> 5] + __popc(bits[s >> 5] & ((1u << (s & 31)) - 1u));
    }
    __syncthreads();
    return prefix[words];
}

// Ring slots of the fuse sources of background columns [qa0, qa0 + nac) (slot[ac * nterms + t],
// -1 when dropped) and their validity.
__device__ inline void build_slots(const Geometry& g, int qa0, int nac, int W,
                                   const unsigned char* __restrict__ valid_n, int* slot,
                                   int* vflag) {
    const int T = g.nterms;
    for (int e = threadIdx.x; e < nac * T; e += kThreads) {
        const int ac = e / T, t = e - (e / T) * T;
        int kind = 0;
        const int s = fuse_source(qa0 + ac, t, g.gh, g.gw, g.half, &kind);
        slot[e] = s < 0 ? -1 : ring_position(g, s, kind) % W;
    }
    for (int ac = threadIdx.x; ac < nac; ac += kThreads) vflag[ac] = valid_n[qa0 + ac];
}

// Fused score: sum over the fuse terms of ring[row source][column source] (fixed order, so pass 1
// and pass 2 compute bit-identical values).
__device__ __forceinline__ float fused_score(const float* __restrict__ ring, int W,
                                             const int* __restrict__ sp,
                                             const int* __restrict__ sq, int T) {
    float z = 0.0f;
    for (int t = 0; t < T; ++t) {
        const int a = sp[t], b = sq[t];
        if ((a | b) >= 0) z += ring[a * W + b];
    }
    return z;
}

// Element k = (c, i, j) of the implicit im2col of a padded map: the patch whose top-left element
// sits at `off` in each channel plane (off < 0: a padding row / column of the GEMM tile -> 0).
__device__ __forceinline__ float patch_elem(const void* map, int64_t base, int off, int k, int K,
                                            int kk2, int ks, int plane, int wp, int f16) {
    if (off < 0 || k >= K) return 0.0f;
    const int c = k / kk2, ij = k - c * kk2, i = ij / ks, j = ij - i * ks;
    return ld(map, base + static_cast<int64_t>(c) * plane + off + i * wp + j, f16);
}

// Raw scores of sequence positions [e0, e1) for every source row:
//   ring[r * W + e % W] = inv[q] * sum_k F[ext[r], k] * B[q, k],  q = ring_flat(e),
// F / B the (implicit) im2col of the padded downscaled maps, k = (c, i, j). fp32 accumulation in
// k order, one thread per output element (same order for every tile: deterministic). Register
// tile 4x4 per thread over a 128 x 32 macro tile, K in chunks of 16 staged through shared
// memory, the next chunk prefetched into registers while the current one is multiplied.
__device__ __forceinline__ void score_columns(const Geometry& g, const void* __restrict__ fdp,
                              const void* __restrict__ bdp, int64_t n_off_f, int64_t n_off_b,
                              const float* __restrict__ inv_n,
                              const int* __restrict__ ext, int nE, int e0, int e1,
                              float* __restrict__ ring, int W, float* stage) {
    float* Fs = stage;              // [kBK][kRT]
    float* Bs = stage + kBK * kRT;  // [kBK][kCT]
    const int tid = threadIdx.x, tr = tid >> 3, tc = tid & 7;
    const int kk2 = g.ks * g.ks;
    const int planeF = g.hfp * g.wfp, planeB = g.hbp * g.wbp;
    // this thread's staging coordinates: F rows r = tid & 127, k = (tid >> 7) + 2u (u < 8);
    // B cols c = tid & 31, k = (tid >> 5) + 8u (u < 2)
    const int fr = tid & (kRT - 1), fk = tid >> 7;
    const int bc = tid & (kCT - 1), bk = tid >> 5;
    for (int r0 = 0; r0 < nE; r0 += kRT) {
        int offF = -1;
        if (r0 + fr < nE) {
            const int p = ext[r0 + fr];
            const int py = p / g.wf;
            offF = py * g.wfp + (p - py * g.wf);
        }
        for (int c0 = e0; c0 < e1; c0 += kCT) {
            int offB = -1;
            if (c0 + bc < e1) {
                const int q = ring_flat(g, c0 + bc);
                const int Y = q / g.gw;
                offB = Y * g.st * g.wbp + (q - Y * g.gw) * g.st;
            }
            float acc[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
            float rf[8], rb[2];
            auto load = [&](int k0) {
#pragma unroll
                for (int u = 0; u < 8; ++u)
                    rf[u] = patch_elem(fdp, n_off_f, offF, k0 + fk + 2 * u, g.K, kk2, g.ks, planeF,
                                       g.wfp, g.f16);
#pragma unroll
                for (int u = 0; u < 2; ++u)
                    rb[u] = patch_elem(bdp, n_off_b, offB, k0 + bk + 8 * u, g.K, kk2, g.ks, planeB,
                                       g.wbp, g.f16);
            };
            load(0);
            for (int k0 = 0; k0 < g.K; k0 += kBK) {
#pragma unroll
                for (int u = 0; u < 8; ++u) Fs[(fk + 2 * u) * kRT + fr] = rf[u];
#pragma unroll
                for (int u = 0; u < 2; ++u) Bs[(bk + 8 * u) * kCT + bc] = rb[u];
                __syncthreads();
                if (k0 + kBK < g.K) load(k0 + kBK);
                // two-level sum: 16-term partials added to the running total (~3x less fp32
                // rounding error than one running sum at K = 1152, for 1 add per 16 FMAs)
                float part[4][4];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) part[i][j] = 0.0f;
#pragma unroll
                for (int k = 0; k < kBK; ++k) {
                    const F4 a = *reinterpret_cast<const F4*>(Fs + k * kRT + tr * 4);
                    const F4 b = *reinterpret_cast<const F4*>(Bs + k * kCT + tc * 4);
                    const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                    for (int i = 0; i < 4; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) part[i][j] += av[i] * bv[j];
                }
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] += part[i][j];
                __syncthreads();
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int e = c0 + tc * 4 + j;
                if (e >= e1) continue;
                const float s = inv_n[ring_flat(g, e)];
                const int slot = e % W;
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int r = r0 + tr * 4 + i;
                    if (r < nE) ring[r * W + slot] = acc[i][j] * s;
                }
            }
        }
    }
    __syncthreads();
}

// ---------------------------------------------------------------------------------------------
// pass 1: row max and sum-exp of the masked softmax
// ---------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kThreads)
    stats_kernel(Geometry g, Plan pl, const void* __restrict__ fdp, const void* __restrict__ bdp,
                 const float* __restrict__ inv, const unsigned char* __restrict__ valid,
                 float* __restrict__ row_m, float* __restrict__ row_l) {
    LT_DYNAMIC_SMEM(sm);
    const SmemLayout L = smem_layout(g, 1, pl.e1, pl.t1y * pl.t1x, pl.nac1, pl.w1);
    unsigned* bits = reinterpret_cast<unsigned*>(sm + L.bits);
    int* prefix = reinterpret_cast<int*>(sm + L.prefix);
    int* ext = reinterpret_cast<int*>(sm + L.ext);
    int* srcloc = reinterpret_cast<int*>(sm + L.srcloc);
    float* rm = sm + L.row_a;
    float* rl = sm + L.row_b;
    int* slot = reinterpret_cast<int*>(sm + L.slot);
    int* vflag = reinterpret_cast<int*>(sm + L.vflag);
    float* ring = sm + L.ring;
    float* stage = sm + L.stage;

    const int n = blockIdx.y, tile = blockIdx.x, NT = g.nterms, W = pl.w1;
    const int ay0 = (tile / pl.n1x) * pl.t1y, ax0 = (tile % pl.n1x) * pl.t1x;
    const int ay1 = imin(ay0 + pl.t1y, g.hf), ax1 = imin(ax0 + pl.t1x, g.wf);
    const int aw = ax1 - ax0, nAR = (ay1 - ay0) * aw;
    const int nE = build_sources(g, ay0, ay1, ax0, ax1, bits, prefix, ext, srcloc);
    for (int ar = threadIdx.x; ar < nAR; ar += kThreads) rm[ar] = -INFINITY, rl[ar] = 0.0f;

    const int64_t off_f = static_cast<int64_t>(n) * g.C * g.hfp * g.wfp;
    const int64_t off_b = static_cast<int64_t>(n) * g.C * g.hbp * g.wbp;
    const float* inv_n = inv + static_cast<int64_t>(n) * g.L;
    const unsigned char* valid_n = valid + static_cast<int64_t>(n) * g.L;
    int done = 0;
    for (int y0 = 0; y0 < g.gh; y0 += pl.tq1) {
        const int y1 = imin(y0 + pl.tq1, g.gh);
        int lo, hi;
        ring_window(g, y0, y1, &lo, &hi);
        score_columns(g, fdp, bdp, off_f, off_b, inv_n, ext, nE, imax(done, lo), hi, ring, W, stage);
        done = imax(done, hi);
        const int qa0 = y0 * g.gw, nAC = (y1 - y0) * g.gw;
        build_slots(g, qa0, nAC, W, valid_n, slot, vflag);
        __syncthreads();
        for (int ar = threadIdx.x; ar < nAR; ar += kThreads) {
            float m = rm[ar], l = rl[ar];
            const int* sp = srcloc + ar * NT;
            for (int ac = 0; ac < nAC; ++ac) {
                if (!vflag[ac]) continue;
                const float v = g.scale * fused_score(ring, W, sp, slot + ac * NT, NT);
                if (v > m) {
                    l = l * expf(m - v) + 1.0f;
                    m = v;
                } else {
                    l += expf(v - m);
                }
            }
            rm[ar] = m, rl[ar] = l;
        }
        __syncthreads();
    }
    for (int ar = threadIdx.x; ar < nAR; ar += kThreads) {
        const int p = (ay0 + ar / aw) * g.wf + ax0 + ar % aw;
        row_m[static_cast<int64_t>(n) * g.Pf + p] = rm[ar];
        row_l[static_cast<int64_t>(n) * g.Pf + p] = rl[ar];
    }
}

// ---------------------------------------------------------------------------------------------
// pass 2: attention and paste
// ---------------------------------------------------------------------------------------------
// Output owners: position (py0, px0) of the (hf+1) x (wf+1) grid owns the output pixels
// (py0*rate + rr - ct, px0*rate + ss - cl), rr, ss < rate: with u = oy + ct, py0 = u / rate. The
// pixel is covered by the raw patches of foreground rows py0 and py0-1 (and columns px0, px0-1):
//   y = 1/4 sum_{di,dj in {0,1}} sum_q A[(py0-di, px0-dj), q] b[c, rate*st*Y + rr + rate*di - rpt,
//                                                                 rate*st*X + ss + rate*dj - rpl].
// FOLD (stride 1): b's index depends on (Y+di, X+dj) only, so with q' = q + d
//   y = 1/4 sum_{q'} A~[p0, q'] V_rs[q'],  A~[p0, q'] = sum_d A[p0 - d, q' - d],
// q' on the (gh+1) x (gw+1) grid. Without FOLD the k index of the paste GEMM is (d, q).
__global__ void __launch_bounds__(kThreads)
    paste_kernel(Geometry g, Plan pl, const void* __restrict__ fdp, const void* __restrict__ bdp,
                 const float* __restrict__ inv, const unsigned char* __restrict__ valid,
                 const float* __restrict__ row_m, const float* __restrict__ row_l,
                 const void* __restrict__ b, void* __restrict__ y, void* __restrict__ att) {
    LT_DYNAMIC_SMEM(sm);
    const SmemLayout L = smem_layout(g, 2, pl.e2, pl.nar2, pl.nac2, pl.w2);
    unsigned* bits = reinterpret_cast<unsigned*>(sm + L.bits);
    int* prefix = reinterpret_cast<int*>(sm + L.prefix);
    int* ext = reinterpret_cast<int*>(sm + L.ext);
    int* srcloc = reinterpret_cast<int*>(sm + L.srcloc);
    float* rm = sm + L.row_a;
    float* rinv = sm + L.row_b;
    int* slot = reinterpret_cast<int*>(sm + L.slot);
    int* vflag = reinterpret_cast<int*>(sm + L.vflag);
    float* ring = sm + L.ring;
    float* abuf = sm + L.abuf;
    float* stage = sm + L.stage;
    float* As = stage;              // [kPK][kMP]   A~ (or shifted A) for the owners
    float* Vs = stage + kPK * kMP;  // [kPK][kNP]   values

    const int n = blockIdx.y, tile = blockIdx.x, chunk = blockIdx.z;
    const int NT = g.nterms, W = pl.w2, rate = g.rate;
    const int oy0 = (tile / pl.n2x) * pl.t2y, ox0 = (tile % pl.n2x) * pl.t2x;
    const int oy1 = imin(oy0 + pl.t2y, g.hf + 1), ox1 = imin(ox0 + pl.t2x, g.wf + 1);
    const int ow = ox1 - ox0, nOwn = (oy1 - oy0) * ow;
    const int ay0 = imax(oy0 - 1, 0), ay1 = imin(oy1, g.hf);
    const int ax0 = imax(ox0 - 1, 0), ax1 = imin(ox1, g.wf);
    const int aw = ax1 - ax0, nAR = (ay1 - ay0) * aw;
    const int c0 = chunk * pl.cc, ncc = imin(pl.cc, g.C - c0), N = rate * rate * ncc;
    const bool FOLD = g.fold != 0;

    const int nE = build_sources(g, ay0, ay1, ax0, ax1, bits, prefix, ext, srcloc);
    for (int ar = threadIdx.x; ar < nAR; ar += kThreads) {
        const int64_t p = static_cast<int64_t>(n) * g.Pf + (ay0 + ar / aw) * g.wf + ax0 + ar % aw;
        const float l = row_l[p];
        rm[ar] = row_m[p];
        rinv[ar] = l > 0.0f ? 1.0f / l : 0.0f;  // 0: no valid patch, the whole row is 0
    }

    const int64_t off_f = static_cast<int64_t>(n) * g.C * g.hfp * g.wfp;
    const int64_t off_b = static_cast<int64_t>(n) * g.C * g.hbp * g.wbp;
    const int64_t off_raw = (static_cast<int64_t>(n) * g.C + c0) * g.Hb * g.Wb;
    const float* inv_n = inv + static_cast<int64_t>(n) * g.L;
    const unsigned char* valid_n = valid + static_cast<int64_t>(n) * g.L;
    const int tid = threadIdx.x, tm = tid >> 5, tn = tid & 31;  // paste: 8 x 32 threads, 8x8 each
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    const int steps = pass2_steps(g, pl.tq2);
    int done = 0;
    for (int s = 0; s < steps; ++s) {
        int ya, yb, y0, y1, lo, hi;
        pass2_rows(g, s, pl.tq2, &ya, &yb, &y0, &y1);
        ring_window(g, ya, yb, &lo, &hi);
        score_columns(g, fdp, bdp, off_f, off_b, inv_n, ext, nE, imax(done, lo), hi, ring, W, stage);
        done = imax(done, hi);
        const int qa0 = ya * g.gw, nAC = (yb - ya) * g.gw;
        build_slots(g, qa0, nAC, W, valid_n, slot, vflag);
        __syncthreads();

        // attention of the block's rows x this step's columns
        for (int e = tid; e < nAR * nAC; e += kThreads) {
            const int ar = e / nAC, ac = e - (e / nAC) * nAC;
            float a = 0.0f;
            if (vflag[ac] && rinv[ar] > 0.0f)
                a = expf(g.scale * fused_score(ring, W, srcloc + ar * NT, slot + ac * NT, NT) -
                         rm[ar]) *
                    rinv[ar];
            abuf[e] = a;
            if (att != nullptr && chunk == 0) {
                const int fy = ay0 + ar / aw, fx = ax0 + ar % aw, q = qa0 + ac;
                const bool own_row = fy >= oy0 && fy < oy1 && fx >= ox0 && fx < ox1;
                const bool own_col = !FOLD || q / g.gw >= y0;  // FOLD: row ya belongs to step s-1
                if (own_row && own_col)
                    st(att, (static_cast<int64_t>(n) * g.L + q) * g.Pf + fy * g.wf + fx, a, g.f16);
            }
        }
        __syncthreads();

        // paste GEMM over this step's k: acc[owner][(rr, ss, c)] += As[k][owner] * Vs[k][...]
        const int gw1 = g.gw + 1;
        const int Kst = FOLD ? (y1 - y0) * gw1 : 4 * nAC;
        for (int k0 = 0; k0 < Kst; k0 += kPK) {
            for (int e = tid; e < kPK * kMP; e += kThreads) {
                const int kk = e / kMP, m = e - (e / kMP) * kMP, k = k0 + kk;
                float v = 0.0f;
                if (k < Kst && m < nOwn) {
                    const int py0 = oy0 + m / ow, px0 = ox0 + m % ow;
                    if (FOLD) {
                        const int qy = y0 + k / gw1, qx = k % gw1;
#pragma unroll
                        for (int d = 0; d < 4; ++d) {
                            const int fy = py0 - (d >> 1), fx = px0 - (d & 1);
                            const int by = qy - (d >> 1), bx = qx - (d & 1);
                            if (fy >= 0 && fy < g.hf && fx >= 0 && fx < g.wf && by >= 0 &&
                                by < g.gh && bx >= 0 && bx < g.gw)
                                v += abuf[((fy - ay0) * aw + fx - ax0) * nAC + (by - ya) * g.gw + bx];
                        }
                    } else {
                        const int d = k / nAC, ac = k - d * nAC;
                        const int fy = py0 - (d >> 1), fx = px0 - (d & 1);
                        if (fy >= 0 && fy < g.hf && fx >= 0 && fx < g.wf)
                            v = abuf[((fy - ay0) * aw + fx - ax0) * nAC + ac];
                    }
                }
                As[e] = v;
            }
            for (int e = tid; e < kPK * kNP; e += kThreads) {
                const int kk = e / kNP, nn = e - (e / kNP) * kNP, k = k0 + kk;
                float v = 0.0f;
                if (k < Kst && nn < N) {
                    const int ph = nn / ncc, c = nn - ph * ncc, rr = ph / rate, ss = ph % rate;
                    int row, col;
                    if (FOLD) {
                        row = rate * (y0 + k / gw1) + rr - g.rpt;
                        col = rate * (k % gw1) + ss - g.rpl;
                    } else {
                        const int d = k / nAC, q = qa0 + k - d * nAC;
                        const int Y = q / g.gw, X = q - (q / g.gw) * g.gw;
                        row = rate * g.st * Y + rr + rate * (d >> 1) - g.rpt;
                        col = rate * g.st * X + ss + rate * (d & 1) - g.rpl;
                    }
                    if (row >= 0 && row < g.Hb && col >= 0 && col < g.Wb)
                        v = ld(b, off_raw + (static_cast<int64_t>(c) * g.Hb + row) * g.Wb + col, g.f16);
                }
                Vs[e] = v;
            }
            __syncthreads();
#pragma unroll 4
            for (int kk = 0; kk < kPK; ++kk) {
                const F4 a0 = *reinterpret_cast<const F4*>(As + kk * kMP + tm * 8);
                const F4 a1 = *reinterpret_cast<const F4*>(As + kk * kMP + tm * 8 + 4);
                const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                float bv[8];
#pragma unroll
                for (int j = 0; j < 8; ++j) bv[j] = Vs[kk * kNP + tn + 32 * j];
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] += av[i] * bv[j];
            }
            __syncthreads();
        }
    }

    // write the owned output pixels (each written by exactly one thread of one block)
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int m = tm * 8 + i;
        if (m >= nOwn) continue;
        const int py0 = oy0 + m / ow, px0 = ox0 + m % ow;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int nn = tn + 32 * j;
            if (nn >= N) continue;
            const int ph = nn / ncc, c = nn - ph * ncc;
            const int oy = py0 * rate + ph / rate - g.ct, ox = px0 * rate + ph % rate - g.cl;
            if (oy < 0 || oy >= g.Hf || ox < 0 || ox >= g.Wf) continue;
            st(y, ((static_cast<int64_t>(n) * g.C + c0 + c) * g.Hf + oy) * g.Wf + ox,
               acc[i][j] * 0.25f, g.f16);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// host launcher
// ---------------------------------------------------------------------------------------------
inline void check_cuda(cudaError_t st, const char* what) {
    if (st != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error(std::string("contextual_attention_cuda: ") + what + " failed: " +
                                 cudaGetErrorName(st) + ": " + cudaGetErrorString(st));
    }
}

inline DeviceLimits current_device_limits() {
    int dev = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    DeviceLimits lim;
    check_cuda(cudaDeviceGetAttribute(&lim.smem_per_block_optin,
                                      cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&lim.smem_per_sm,
                                      cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev),
               "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&lim.sm_count, cudaDevAttrMultiProcessorCount, dev),
               "cudaDeviceGetAttribute");
    return lim;
}

// Plans depend on the geometry and the device only: cache them (TensorRT enqueue and torch calls
// come back with the same shapes).
inline Plan cached_plan(const Geometry& g, const DeviceLimits& lim) {
    using Key = std::tuple<std::string, int, int, int>;
    static std::mutex mu;
    static std::map<Key, Plan> cache;
    std::string gk(reinterpret_cast<const char*>(&g), sizeof(Geometry));
    const Key key{gk, lim.smem_per_block_optin, lim.smem_per_sm, lim.sm_count};
    {
        std::lock_guard<std::mutex> lock(mu);
        auto it = cache.find(key);
        if (it != cache.end()) return it->second;
    }
    Plan p = make_plan(g, lim);
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() > 256) cache.clear();
    cache.emplace(key, p);
    return p;
}

inline unsigned grid_1d(int64_t total) {
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

inline void forward_impl(const Geometry& g, const Plan& pl, const void* f, const void* b,
                         const void* mask, void* y, void* attention, unsigned char* ws,
                         cudaStream_t stream) {
    const WorkspaceLayout wl = workspace_layout(g, g.f16 ? 2 : 4);
    void* fdp = ws + wl.fdp;
    void* bdp = ws + wl.bdp;
    float* inv = reinterpret_cast<float*>(ws + wl.inv);
    unsigned char* valid = ws + wl.valid;
    float* row_m = reinterpret_cast<float*>(ws + wl.row_m);
    float* row_l = reinterpret_cast<float*>(ws + wl.row_l);
    const int64_t planes = static_cast<int64_t>(g.B) * g.C;

    auto k_pad = &pad_downscale_kernel;
    LT_LAUNCH(k_pad, grid_1d(planes * g.hfp * g.wfp), kThreads, 0, stream)
    (f, fdp, planes, g.Hf, g.Wf, g.rate, g.hf, g.wf, g.hfp, g.wfp, g.fpt, g.fpl, g.f16);
    LT_LAUNCH(k_pad, grid_1d(planes * g.hbp * g.wbp), kThreads, 0, stream)
    (b, bdp, planes, g.Hb, g.Wb, g.rate, g.hb, g.wb, g.hbp, g.wbp, g.pt, g.pl, g.f16);
    auto k_stats = &patch_stats_kernel;
    LT_LAUNCH(k_stats, grid_1d(static_cast<int64_t>(g.B) * g.L), kThreads, 0, stream)
    (g, bdp, mask, inv, valid);
    check_cuda(cudaGetLastError(), "prep kernels");

    auto k1 = &stats_kernel;
    check_cuda(cudaFuncSetAttribute(k1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(pl.smem1)),
               "cudaFuncSetAttribute (pass 1)");
    const dim3 grid1(static_cast<unsigned>(pl.n1y * pl.n1x), static_cast<unsigned>(g.B), 1);
    LT_LAUNCH(k1, grid1, kThreads, pl.smem1, stream)(g, pl, fdp, bdp, inv, valid, row_m, row_l);
    check_cuda(cudaGetLastError(), "pass 1 (softmax statistics)");

    auto k2 = &paste_kernel;
    check_cuda(cudaFuncSetAttribute(k2, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(pl.smem2)),
               "cudaFuncSetAttribute (pass 2)");
    const dim3 grid2(static_cast<unsigned>(pl.n2y * pl.n2x), static_cast<unsigned>(g.B),
                     static_cast<unsigned>(pl.nchunks));
    LT_LAUNCH(k2, grid2, kThreads, pl.smem2, stream)
    (g, pl, fdp, bdp, inv, valid, row_m, row_l, b, y, attention);
    check_cuda(cudaGetLastError(), "pass 2 (attention and paste)");
}

}  // namespace ca

namespace cuda {

inline std::size_t element_size(DType dt) { return dt == DType::kFloat16 ? 2 : 4; }

std::size_t contextual_attention_workspace_bytes(const CaShape& s,
                                                 const ContextualAttentionParams& prm,
                                                 DType dtype) {
    const ca::Geometry g =
        ca::make_geometry(s.B, s.C, s.Hf, s.Wf, s.Hb, s.Wb, s.mask_batch, prm);
    return ca::workspace_layout(g, element_size(dtype)).total;
}

std::string contextual_attention_plan(const CaShape& s, const ContextualAttentionParams& prm) {
    const ca::Geometry g =
        ca::make_geometry(s.B, s.C, s.Hf, s.Wf, s.Hb, s.Wb, s.mask_batch, prm);
    return ca::describe(g, ca::cached_plan(g, ca::current_device_limits()));
}

void contextual_attention_forward(const void* f, const void* b, const void* mask, void* y,
                                  void* attention, void* workspace, std::size_t workspace_bytes,
                                  const CaShape& s, const ContextualAttentionParams& prm,
                                  DType dtype, void* stream) {
    const ca::Geometry g =
        ca::make_geometry(s.B, s.C, s.Hf, s.Wf, s.Hb, s.Wb, s.mask_batch, prm);
    const std::size_t need = ca::workspace_layout(g, element_size(dtype)).total;
    if (workspace_bytes < need)
        throw std::invalid_argument("contextual_attention_cuda: workspace of " +
                                    std::to_string(workspace_bytes) + " bytes, need " +
                                    std::to_string(need));
    if ((s.mask_batch != 0) != (mask != nullptr))
        throw std::invalid_argument("contextual_attention_cuda: mask pointer and mask_batch disagree");
    if (g.B == 0) return;
    if (f == nullptr || b == nullptr || y == nullptr || workspace == nullptr)
        throw std::invalid_argument("contextual_attention_cuda: null device pointer");
    const ca::Plan pl = ca::cached_plan(g, ca::current_device_limits());
    ca::Geometry gd = g;
    gd.f16 = dtype == DType::kFloat16 ? 1 : 0;
    ca::forward_impl(gd, pl, f, b, mask, y, attention, static_cast<unsigned char*>(workspace),
                     static_cast<cudaStream_t>(stream));
}

}  // namespace cuda
}  // namespace lt
