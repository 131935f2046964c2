// CPU implementations of the alignment kernels declared in warp.h.
#include "warp.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "bilinear.h"
#include "cpu_dispatch.h"
#include "warp_rows.h"

namespace lt {

std::array<double, 6> estimate_similarity(const double* src, const double* dst, std::size_t n) {
    if (n < 2) throw std::invalid_argument("estimate_similarity needs at least 2 point pairs");
    double ms[2] = {0.0, 0.0}, md[2] = {0.0, 0.0};
    for (std::size_t i = 0; i < n; ++i) {
        for (int j = 0; j < 2; ++j) {
            if (!std::isfinite(src[2 * i + j]) || !std::isfinite(dst[2 * i + j]))
                throw std::invalid_argument("estimate_similarity: points must be finite");
            ms[j] += src[2 * i + j];
            md[j] += dst[2 * i + j];
        }
    }
    const double inv_n = 1.0 / static_cast<double>(n);
    ms[0] *= inv_n; ms[1] *= inv_n;
    md[0] *= inv_n; md[1] *= inv_n;

    // With centred points s_i, d_i, Umeyama's covariance is C = (1/n) sum d_i s_i^T. In 2-D the
    // optimal proper rotation times scale c*R = [a -b; b a] has
    //   a = (C00 + C11) / var_s,  b = (C10 - C01) / var_s,  var_s = (1/n) sum |s_i|^2,
    // which equals R = U S V^T, c = tr(D S) / var_s with S = diag(1, sign(det U det V)).
    double var_s = 0.0, c00 = 0.0, c01 = 0.0, c10 = 0.0, c11 = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        const double sx = src[2 * i] - ms[0], sy = src[2 * i + 1] - ms[1];
        const double dx = dst[2 * i] - md[0], dy = dst[2 * i + 1] - md[1];
        var_s += sx * sx + sy * sy;
        c00 += dx * sx;
        c01 += dx * sy;
        c10 += dy * sx;
        c11 += dy * sy;
    }
    if (!(var_s > 0.0))
        throw std::invalid_argument("estimate_similarity: all source points coincide");
    const double a = (c00 + c11) / var_s;
    const double b = (c10 - c01) / var_s;
    return {a, -b, md[0] - (a * ms[0] - b * ms[1]),
            b, a,  md[1] - (b * ms[0] + a * ms[1])};
}

namespace {

using warp_detail::warp_rows;

LT_TARGET_CLONES
void warp_dispatch(const uint8_t* src, int src_h, int src_w, int channels, std::ptrdiff_t stride,
                   const double inv[6], uint8_t* dst, int out_h, int out_w) {
    switch (channels) {
        case 1: warp_rows<1>(src, src_h, src_w, stride, inv, dst, out_h, out_w); break;
        case 3: warp_rows<3>(src, src_h, src_w, stride, inv, dst, out_h, out_w); break;
        default: warp_rows<4>(src, src_h, src_w, stride, inv, dst, out_h, out_w); break;
    }
}

}  // namespace

void warp_affine(const uint8_t* src, int src_h, int src_w, int channels,
                 std::ptrdiff_t src_row_stride, const double m[6], uint8_t* dst, int out_h,
                 int out_w) {
    if (src_h < 1 || src_w < 1) throw std::invalid_argument("warp_affine: empty source image");
    if (out_h < 1 || out_w < 1) throw std::invalid_argument("warp_affine: empty output size");
    double inv[6];
    if (!invert_affine(m, inv))
        throw std::invalid_argument("warp_affine: M is singular or not finite");
    if (channels != 1 && channels != 3 && channels != 4)
        throw std::invalid_argument("warp_affine: channels must be 1, 3 or 4, got " +
                                    std::to_string(channels));
    warp_dispatch(src, src_h, src_w, channels, src_row_stride, inv, dst, out_h, out_w);
}

}  // namespace lt
