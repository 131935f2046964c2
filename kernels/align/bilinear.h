// Per-pixel bilinear sampling shared by the CPU warp (warp.cpp) and the CUDA warp (cuda/warp.cu).
//
// Keeping the arithmetic in one header is what makes the two back ends agree: both compute the
// source coordinate with the same float32 formula and interpolate the same way. Fused
// multiply-add would change the rounding, so the CPU file is built with -ffp-contract=off and the
// CUDA files with --fmad=false (see CMakeLists.txt).
//
// Conventions (identical to OpenCV's cv::warpAffine with INTER_LINEAR + BORDER_CONSTANT(0)):
//   * pixel (x, y) has integer coordinates at its centre; x is the column, y the row;
//   * the 2x3 matrix handed to the sampler is the INVERSE map, destination -> source:
//       src_x = A[0]*x + A[1]*y + A[2],  src_y = A[3]*x + A[4]*y + A[5];
//   * taps that fall outside the source image read as 0 (so border pixels blend with black);
//   * the interpolated value is rounded to nearest (ties to even) and saturated to [0, 255].
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define LT_HD __host__ __device__ __forceinline__
#else
#define LT_HD inline
#endif

namespace lt {

// Inverts a 2x3 affine matrix (row-major [a b c; d e f]) the way OpenCV does (in double).
// Returns false when the 2x2 part is singular or the result is not finite.
LT_HD bool invert_affine(const double m[6], double inv[6]) {
    const double det = m[0] * m[4] - m[1] * m[3];
    if (!(det != 0.0)) return false;
    const double r = 1.0 / det;
    const double a = m[4] * r, b = -m[1] * r, d = -m[3] * r, e = m[0] * r;
    inv[0] = a;
    inv[1] = b;
    inv[2] = -a * m[2] - b * m[5];
    inv[3] = d;
    inv[4] = e;
    inv[5] = -d * m[2] - e * m[5];
    for (int i = 0; i < 6; ++i) {
        if (!(inv[i] - inv[i] == 0.0)) return false;  // NaN or inf
    }
    return true;
}

// Row-constant part of the mapped coordinate, computed in double then rounded to float32.
LT_HD void map_row(const double inv[6], int y, float* row_x, float* row_y) {
    *row_x = static_cast<float>(static_cast<double>(y) * inv[1] + inv[2]);
    *row_y = static_cast<float>(static_cast<double>(y) * inv[4] + inv[5]);
}

// Rounds a value in about [-0.5, 255.5] to the nearest integer, ties to even, saturated to uint8.
LT_HD uint8_t round_u8(float v) {
#if defined(__CUDA_ARCH__)
    int r = __float2int_rn(v);
#elif defined(__FAST_MATH__)
    int r = static_cast<int>(lrintf(v));
#else
    // Adding and subtracting 1.5 * 2^23 rounds to an integer in the current (nearest-even) mode
    // without a libm call; exact for |v| < 2^22. Only valid without -ffast-math (handled above).
    const float magic = 12582912.0f;
    int r = static_cast<int>((v + magic) - magic);
#endif
    return static_cast<uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
}

// Clamps a mapped coordinate into [-2, hi] (hi = source size + 1); NaN goes to -2. Values that
// get clamped were fully outside the source anyway, so the result is unchanged, and the clamp
// keeps the float -> int conversion below well defined.
LT_HD float clamp_coord(float v, float hi) {
    v = v > -2.0f ? v : -2.0f;
    return v < hi ? v : hi;
}

// floor() for |v| < 2^31 without a libm call (truncate, then step down for negative fractions).
LT_HD int floor_to_int(float v) {
    const int t = static_cast<int>(v);
    return t - (v < static_cast<float>(t) ? 1 : 0);
}

// The interpolation itself, on the four taps (as floats holding 0..255) and the fractional
// offsets fx, fy in [0, 1): two horizontal lerps, one vertical, round to nearest.
LT_HD uint8_t interpolate(float p00, float p01, float p10, float p11, float fx, float fy) {
    const float v0 = p00 + fx * (p01 - p00);
    const float v1 = p10 + fx * (p11 - p10);
    return round_u8(v0 + fy * (v1 - v0));
}

// Samples C interleaved uint8 channels at source position (sx, sy) and writes C bytes to out.
//   src: top-left pixel of the source, rows `row_stride` bytes apart, pixels C bytes apart.
//   w, h: source size in pixels.
// (The CPU warp evaluates the same steps a row at a time so that they vectorise.)
template <int C>
LT_HD void sample_bilinear(const uint8_t* src, std::ptrdiff_t row_stride, int w, int h, float sx,
                           float sy, uint8_t* out) {
    sx = clamp_coord(sx, static_cast<float>(w) + 1.0f);
    sy = clamp_coord(sy, static_cast<float>(h) + 1.0f);
    const int ix = floor_to_int(sx);
    const int iy = floor_to_int(sy);
    const float fx = sx - static_cast<float>(ix);
    const float fy = sy - static_cast<float>(iy);
    // Taps outside the image read as 0; a pixel with no tap inside becomes 0.
    const bool x0 = ix >= 0 && ix < w, x1 = ix + 1 >= 0 && ix + 1 < w;
    const bool y0 = iy >= 0 && iy < h, y1 = iy + 1 >= 0 && iy + 1 < h;
    const uint8_t* r0 = src + static_cast<std::ptrdiff_t>(y0 ? iy : 0) * row_stride;
    const uint8_t* r1 = src + static_cast<std::ptrdiff_t>(y1 ? iy + 1 : 0) * row_stride;
    const std::ptrdiff_t o0 = static_cast<std::ptrdiff_t>(x0 ? ix : 0) * C;
    const std::ptrdiff_t o1 = static_cast<std::ptrdiff_t>(x1 ? ix + 1 : 0) * C;
    for (int c = 0; c < C; ++c) {
        const float p00 = (y0 && x0) ? r0[o0 + c] : 0.0f;
        const float p01 = (y0 && x1) ? r0[o1 + c] : 0.0f;
        const float p10 = (y1 && x0) ? r1[o0 + c] : 0.0f;
        const float p11 = (y1 && x1) ? r1[o1 + c] : 0.0f;
        out[c] = interpolate(p00, p01, p10, p11, fx, fy);
    }
}

}  // namespace lt
