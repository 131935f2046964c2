// Validation, derived sizes and the tile planner of the CUDA contextual attention (see plan.h).
#include "contextual_attention/cuda/plan.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace lt {
namespace ca {
namespace {

void fail(const std::string& msg) { throw std::invalid_argument(msg); }

std::string str(int64_t v) { return std::to_string(v); }

struct Candidate {
    int ty, tx;
};

// Pass-1 tiles (foreground positions per block) and pass-2 tiles (output owners, at most kMP).
const Candidate kPass1[] = {{32, 32}, {24, 32}, {24, 24}, {16, 32}, {16, 24}, {16, 16}, {12, 16},
                            {12, 12}, {8, 16},  {8, 12},  {8, 8},   {6, 8},   {4, 8},   {4, 4},
                            {2, 4},   {2, 2},   {1, 2},   {1, 1}};
const Candidate kPass2[] = {{8, 8}, {6, 8}, {4, 16}, {4, 8}, {4, 4}, {2, 8},
                            {2, 4}, {2, 2}, {1, 4},  {1, 2}, {1, 1}};

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Columns per step: about one warp-wide GEMM tile of new score columns.
int rows_per_step(int grid_rows, int cols) { return imax(1, imin(grid_rows, ceil_div(kCT, cols))); }

int blocks_per_sm(std::size_t smem, const DeviceLimits& lim) {
    const std::size_t per_block = smem + 1024;  // the runtime reserves 1 KB per block (sm_80+)
    const int by_smem = static_cast<int>(static_cast<std::size_t>(lim.smem_per_sm) / per_block);
    return imax(1, imin(2048 / kThreads, by_smem));
}

double waves(int64_t blocks, std::size_t smem, const DeviceLimits& lim) {
    const int64_t slots = static_cast<int64_t>(imax(lim.sm_count, 1)) * blocks_per_sm(smem, lim);
    return static_cast<double>((blocks + slots - 1) / slots);
}

}  // namespace

Geometry make_geometry(int64_t B, int64_t C, int64_t Hf, int64_t Wf, int64_t Hb, int64_t Wb,
                       int64_t mask_batch, const ContextualAttentionParams& prm) {
    if (prm.ksize < 1 || prm.ksize > 15) fail("ksize must be in [1, 15], got " + str(prm.ksize));
    if (prm.stride < 1 || prm.stride > 8) fail("stride must be in [1, 8], got " + str(prm.stride));
    if (prm.rate < 1 || prm.rate > 8) fail("rate must be in [1, 8], got " + str(prm.rate));
    if (prm.fuse_k < 1 || prm.fuse_k % 2 != 1)
        fail("fuse_k must be odd and >= 1, got " + str(prm.fuse_k));
    if (!std::isfinite(prm.softmax_scale)) fail("softmax_scale must be finite");
    if (B < 0) fail("batch size must be >= 0, got " + str(B));
    if (C < 1) fail("the channel count C must be >= 1, got " + str(C));
    const int64_t sizes[4] = {Hf, Wf, Hb, Wb};
    for (int64_t v : sizes)
        if (v < 1 || v % prm.rate != 0)
            fail("spatial sizes must be positive multiples of rate=" + str(prm.rate) + "; got f (" +
                 str(Hf) + ", " + str(Wf) + "), b (" + str(Hb) + ", " + str(Wb) + ")");
    const int64_t big = std::numeric_limits<int32_t>::max();
    if (B > big || C * Hf * Wf > big || C * Hb * Wb > big)
        fail("input too large: C*H*W of one sample must stay below 2^31");
    if (B > 65535) fail("batch size must be <= 65535 per call (a launch grid dimension), got " + str(B));
    if (mask_batch != 0 && mask_batch != 1 && mask_batch != B)
        fail("mask batch must be 1 or B=" + str(B) + ", got " + str(mask_batch));

    Geometry g{};
    g.B = static_cast<int>(B), g.C = static_cast<int>(C);
    g.Hf = static_cast<int>(Hf), g.Wf = static_cast<int>(Wf);
    g.Hb = static_cast<int>(Hb), g.Wb = static_cast<int>(Wb);
    g.mask_batch = static_cast<int>(mask_batch);
    g.ks = prm.ksize, g.st = prm.stride, g.rate = prm.rate, g.kr = 2 * prm.rate;
    g.half = prm.fuse ? prm.fuse_k / 2 : 0;
    g.nterms = (2 * g.half + 1) * (2 * g.half + 1);
    g.hf = g.Hf / g.rate, g.wf = g.Wf / g.rate, g.Pf = g.hf * g.wf;
    g.hb = g.Hb / g.rate, g.wb = g.Wb / g.rate;
    g.gh = ceil_div(g.hb, g.st), g.gw = ceil_div(g.wb, g.st), g.L = g.gh * g.gw;
    if (g.Pf > kMaxForeground)
        fail("the CUDA kernel supports at most " + str(kMaxForeground) +
             " foreground positions (H/rate * W/rate); got " + str(g.hf) + " x " + str(g.wf) +
             " (use the CPU kernel or a larger rate)");
    if (g.half > kMaxFuseHalf)
        fail("the CUDA kernel supports fuse_k <= " + str(2 * kMaxFuseHalf + 1) + ", got " +
             str(prm.fuse_k));
    if (g.half > 0 && (g.half >= g.gh || g.half >= g.hf))
        fail("fuse_k=" + str(prm.fuse_k) + " needs feature maps at least " +
             str(g.half + 1) + " patches high after the rate-" + str(g.rate) +
             " downscale; got foreground " + str(g.hf) + ", background grid " + str(g.gh));
    g.fpt = same_pad_before(g.hf, g.ks, 1), g.fpl = same_pad_before(g.wf, g.ks, 1);
    g.pt = same_pad_before(g.hb, g.ks, g.st), g.pl = same_pad_before(g.wb, g.ks, g.st);
    g.rpt = same_pad_before(g.Hb, g.kr, g.rate * g.st);
    g.rpl = same_pad_before(g.Wb, g.kr, g.rate * g.st);
    g.ct = same_pad_before(g.Hf, g.kr, g.rate), g.cl = same_pad_before(g.Wf, g.kr, g.rate);
    g.hfp = g.hf + g.ks - 1, g.wfp = g.wf + g.ks - 1;
    g.hbp = (g.gh - 1) * g.st + g.ks, g.wbp = (g.gw - 1) * g.st + g.ks;
    g.K = g.C * g.ks * g.ks;
    if (g.half > 0) {
        g.bw_lo = imax(0, (g.gh - g.half) * g.gw - g.half);
        g.nbw = g.L - g.bw_lo;
        g.ntw = imin(g.L, g.half * g.gw + g.half);
    } else {
        g.bw_lo = g.L, g.nbw = 0, g.ntw = 0;
    }
    g.nseq = g.nbw + g.L + g.ntw;
    g.fold = g.st == 1 ? 1 : 0;
    g.scale = static_cast<float>(prm.softmax_scale);
    return g;
}

namespace {

// count_sources for many rectangles of one geometry without clearing a bitmap each time.
class SourceCounter {
public:
    explicit SourceCounter(const Geometry& g) : g_(g), stamp_(static_cast<std::size_t>(g.Pf), 0) {}
    int operator()(int ay0, int ay1, int ax0, int ax1) {
        ++round_;
        int n = 0;
        for (int y = ay0; y < ay1; ++y)
            for (int x = ax0; x < ax1; ++x)
                for (int t = 0; t < g_.nterms; ++t) {
                    const int s = fuse_source(y * g_.wf + x, t, g_.hf, g_.wf, g_.half, nullptr);
                    if (s >= 0 && stamp_[s] != round_) stamp_[s] = round_, ++n;
                }
        return n;
    }

private:
    const Geometry& g_;
    std::vector<int> stamp_;
    int round_ = 0;
};

}  // namespace

int count_sources(const Geometry& g, int ay0, int ay1, int ax0, int ax1) {
    return SourceCounter(g)(ay0, ay1, ax0, ax1);
}

Plan make_plan(const Geometry& g, const DeviceLimits& lim) {
    Plan best{};
    SourceCounter count(g);
    const std::size_t limit = static_cast<std::size_t>(lim.smem_per_block_optin);

    // ---- pass 1: softmax statistics per foreground position
    {
        const int tq = rows_per_step(g.gh, g.gw);
        int w = 0;
        for (int y0 = 0; y0 < g.gh; y0 += tq) {
            int lo, hi;
            ring_window(g, y0, imin(y0 + tq, g.gh), &lo, &hi);
            w = imax(w, hi - lo);
        }
        w |= 1;  // odd: rows of the ring fall into different banks
        const int nac = tq * g.gw;
        double best_cost = -1.0;
        for (const Candidate& c : kPass1) {
            const int ty = imin(c.ty, g.hf), tx = imin(c.tx, g.wf);
            const int ny = ceil_div(g.hf, ty), nx = ceil_div(g.wf, tx);
            int e = 0;
            for (int iy = 0; iy < ny; ++iy)
                for (int ix = 0; ix < nx; ++ix)
                    e = imax(e, count(iy * ty, imin(iy * ty + ty, g.hf), ix * tx,
                                      imin(ix * tx + tx, g.wf)));
            const std::size_t smem =
                static_cast<std::size_t>(smem_layout(g, 1, e, ty * tx, nac, w).total) * 4;
            if (smem > limit) continue;
            const double cost = waves(static_cast<int64_t>(g.B) * ny * nx, smem, lim) * e;
            if (best_cost < 0 || cost < best_cost) {
                best_cost = cost;
                best.t1y = ty, best.t1x = tx, best.n1y = ny, best.n1x = nx, best.e1 = e;
                best.tq1 = tq, best.w1 = w, best.nac1 = nac, best.smem1 = smem;
            }
        }
        if (best_cost < 0)
            fail("contextual attention: feature maps of " + str(g.hf) + " x " + str(g.wf) +
                 " positions (background " + str(g.gh) + " x " + str(g.gw) +
                 ") do not fit this GPU's shared memory (" + str(limit) +
                 " bytes per block); use a larger rate or the CPU kernel");
    }

    // ---- pass 2: paste, tiles of output owners on the (hf+1) x (wf+1) grid
    {
        const int tq = rows_per_step(g.fold ? g.gh + 1 : g.gh, g.fold ? g.gw + 1 : g.gw);
        const int steps = pass2_steps(g, tq);
        int w = 0, nac = 0;
        for (int s = 0; s < steps; ++s) {
            int ya, yb, y0, y1, lo, hi;
            pass2_rows(g, s, tq, &ya, &yb, &y0, &y1);
            ring_window(g, ya, yb, &lo, &hi);
            w = imax(w, hi - lo);
            nac = imax(nac, (yb - ya) * g.gw);
        }
        w |= 1;
        const int rate2 = g.rate * g.rate;
        const int cc = imin(g.C, kNP / rate2);
        const int nchunks = ceil_div(g.C, cc);
        const int oh = g.hf + 1, ow = g.wf + 1;
        double best_cost = -1.0;
        for (const Candidate& c : kPass2) {
            const int ty = imin(c.ty, oh), tx = imin(c.tx, ow);
            if (ty * tx > kMP) continue;
            const int ny = ceil_div(oh, ty), nx = ceil_div(ow, tx);
            const int nar = (ty + 1) * (tx + 1);
            int e = 0;
            for (int iy = 0; iy < ny; ++iy)
                for (int ix = 0; ix < nx; ++ix) {
                    const int oy0 = iy * ty, ox0 = ix * tx;
                    const int ay0 = imax(oy0 - 1, 0), ay1 = imin(oy0 + ty, g.hf);
                    const int ax0 = imax(ox0 - 1, 0), ax1 = imin(ox0 + tx, g.wf);
                    e = imax(e, count(ay0, ay1, ax0, ax1));
                }
            const std::size_t smem =
                static_cast<std::size_t>(smem_layout(g, 2, e, nar, nac, w).total) * 4;
            if (smem > limit) continue;
            const double per_block = static_cast<double>(e) * g.K +
                                     static_cast<double>(ty * tx) * rate2 * cc * (g.fold ? 1 : 4);
            const double cost =
                waves(static_cast<int64_t>(g.B) * ny * nx * nchunks, smem, lim) * per_block;
            if (best_cost < 0 || cost < best_cost) {
                best_cost = cost;
                best.t2y = ty, best.t2x = tx, best.n2y = ny, best.n2x = nx, best.e2 = e;
                best.nar2 = nar, best.tq2 = tq, best.w2 = w, best.nac2 = nac;
                best.cc = cc, best.nchunks = nchunks, best.smem2 = smem;
            }
        }
        if (best_cost < 0)
            fail("contextual attention: background grid " + str(g.gh) + " x " + str(g.gw) +
                 " does not fit this GPU's shared memory (" + str(limit) +
                 " bytes per block); use a larger rate or the CPU kernel");
    }
    return best;
}

std::string describe(const Geometry& g, const Plan& p) {
    std::ostringstream o;
    o << "{\"fg_grid\": [" << g.hf << ", " << g.wf << "], \"bg_grid\": [" << g.gh << ", " << g.gw
      << "], \"fuse_terms\": " << g.nterms << ", \"fold\": " << (g.fold ? "true" : "false")
      << ", \"pass1\": {\"tile\": [" << p.t1y << ", " << p.t1x << "], \"blocks\": "
      << static_cast<int64_t>(g.B) * p.n1y * p.n1x << ", \"source_rows\": " << p.e1
      << ", \"ring\": " << p.w1 << ", \"rows_per_step\": " << p.tq1 << ", \"smem\": " << p.smem1
      << "}, \"pass2\": {\"tile\": [" << p.t2y << ", " << p.t2x << "], \"blocks\": "
      << static_cast<int64_t>(g.B) * p.n2y * p.n2x * p.nchunks << ", \"source_rows\": " << p.e2
      << ", \"ring\": " << p.w2 << ", \"rows_per_step\": " << p.tq2
      << ", \"channels_per_block\": " << p.cc << ", \"smem\": " << p.smem2 << "}}";
    return o.str();
}

}  // namespace ca
}  // namespace lt
