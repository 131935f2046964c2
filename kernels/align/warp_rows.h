// Row kernels of the CPU warp (internal to warp.cpp; not part of the kernel API).
//
// They evaluate exactly the arithmetic of sample_bilinear() in bilinear.h, reorganised a row at a
// time so that it vectorises: first the mapped coordinates of the whole row, then the pixels
// (4-lane SIMD per pixel for 3/4 channels, a gather + flat vector loop for 1 channel). Pixels
// whose taps touch the image border take the scalar path, where outside taps read as 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bilinear.h"
#include "cpu_dispatch.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace lt {
namespace warp_detail {

// Coordinates of one output row: integer tap position and fractional offsets per pixel, computed
// exactly as in sample_bilinear (bilinear.h).
struct RowCoords {
    std::vector<int> ix, iy;
    std::vector<float> fx, fy;
    explicit RowCoords(std::size_t n) : ix(n), iy(n), fx(n), fy(n) {}

    LT_ALWAYS_INLINE void compute(const double inv[6], int y, int src_w, int src_h) {
        const float a0 = static_cast<float>(inv[0]);
        const float a3 = static_cast<float>(inv[3]);
        const float hi_x = static_cast<float>(src_w) + 1.0f;
        const float hi_y = static_cast<float>(src_h) + 1.0f;
        float row_x, row_y;
        map_row(inv, y, &row_x, &row_y);
        const std::size_t n = ix.size();
        for (std::size_t x = 0; x < n; ++x) {
            const float xf = static_cast<float>(static_cast<int>(x));
            const float sx = clamp_coord(a0 * xf + row_x, hi_x);
            const float sy = clamp_coord(a3 * xf + row_y, hi_y);
            ix[x] = floor_to_int(sx);
            iy[x] = floor_to_int(sy);
            fx[x] = sx - static_cast<float>(ix[x]);
            fy[x] = sy - static_cast<float>(iy[x]);
        }
    }
};

// One pixel whose taps may fall outside the image (those read as 0).
template <int C>
LT_ALWAYS_INLINE void border_pixel(const uint8_t* src, std::ptrdiff_t stride, int w, int h,
                                   int x0, int y0, float fx, float fy, uint8_t* out) {
    const bool in_x0 = x0 >= 0 && x0 < w, in_x1 = x0 + 1 >= 0 && x0 + 1 < w;
    const bool in_y0 = y0 >= 0 && y0 < h, in_y1 = y0 + 1 >= 0 && y0 + 1 < h;
    const uint8_t* r0 = src + static_cast<std::ptrdiff_t>(in_y0 ? y0 : 0) * stride;
    const uint8_t* r1 = src + static_cast<std::ptrdiff_t>(in_y1 ? y0 + 1 : 0) * stride;
    const std::ptrdiff_t o0 = static_cast<std::ptrdiff_t>(in_x0 ? x0 : 0) * C;
    const std::ptrdiff_t o1 = static_cast<std::ptrdiff_t>(in_x1 ? x0 + 1 : 0) * C;
    for (int c = 0; c < C; ++c) {
        const float p00 = (in_y0 && in_x0) ? r0[o0 + c] : 0.0f;
        const float p01 = (in_y0 && in_x1) ? r0[o1 + c] : 0.0f;
        const float p10 = (in_y1 && in_x0) ? r1[o0 + c] : 0.0f;
        const float p11 = (in_y1 && in_x1) ? r1[o1 + c] : 0.0f;
        out[c] = interpolate(p00, p01, p10, p11, fx, fy);
    }
}

// C = 3 or 4 channels of an interior pixel at once, lane c = channel c (lane 3 unused for C = 3),
// with the same float operations as interpolate() in every lane, hence the same result. Reads
// 4 bytes per tap, i.e. one byte past the tap for C = 3: the caller guarantees it is in the row.
#if defined(__SSE2__) && !defined(LT_WARP_NO_SSE2)
#define LT_HAVE_PIXEL_SIMD 1
LT_ALWAYS_INLINE __m128 load4(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    const __m128i zero = _mm_setzero_si128();
    const __m128i b = _mm_cvtsi32_si128(v);
    return _mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(b, zero), zero));
}

// `wide_store`: out has room for 4 bytes (the 4th is overwritten later) - avoids a byte-wise store.
template <int C>
LT_ALWAYS_INLINE void interior_pixel_simd(const uint8_t* p, std::ptrdiff_t stride, float fx,
                                          float fy, uint8_t* out, bool wide_store) {
    const __m128 p00 = load4(p), p01 = load4(p + C);
    const __m128 p10 = load4(p + stride), p11 = load4(p + stride + C);
    const __m128 vx = _mm_set1_ps(fx), vy = _mm_set1_ps(fy);
    const __m128 v0 = _mm_add_ps(p00, _mm_mul_ps(vx, _mm_sub_ps(p01, p00)));
    const __m128 v1 = _mm_add_ps(p10, _mm_mul_ps(vx, _mm_sub_ps(p11, p10)));
    const __m128 v = _mm_add_ps(v0, _mm_mul_ps(vy, _mm_sub_ps(v1, v0)));
    // cvtps rounds to nearest-even (default MXCSR mode); the packs saturate to [0, 255].
    const __m128i r = _mm_cvtps_epi32(v);
    const __m128i b = _mm_packus_epi16(_mm_packs_epi32(r, r), r);
    const int32_t bytes = _mm_cvtsi128_si32(b);
    if (C == 4 || wide_store)
        std::memcpy(out, &bytes, 4);
    else
        std::memcpy(out, &bytes, C);
}
#elif defined(__GNUC__)  // GCC / Clang vector extensions (e.g. NEON on ARM)
#define LT_HAVE_PIXEL_SIMD 1
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint8_t v4b __attribute__((vector_size(4)));

LT_ALWAYS_INLINE v4f load4(const uint8_t* p) {
    v4b b;
    std::memcpy(&b, p, 4);
    return __builtin_convertvector(b, v4f);
}

template <int C>
LT_ALWAYS_INLINE void interior_pixel_simd(const uint8_t* p, std::ptrdiff_t stride, float fx,
                                          float fy, uint8_t* out, bool /*wide_store*/) {
    const v4f p00 = load4(p), p01 = load4(p + C);
    const v4f p10 = load4(p + stride), p11 = load4(p + stride + C);
    const v4f v0 = p00 + fx * (p01 - p00);
    const v4f v1 = p10 + fx * (p11 - p10);
    const v4f v = v0 + fy * (v1 - v0);
    uint8_t b[4];
    for (int c = 0; c < C; ++c) b[c] = round_u8(v[c]);
    std::memcpy(out, b, C);
}
#endif

// C = 3 or 4: pixel-wise SIMD for interior pixels, scalar for pixels touching the border.
template <int C>
LT_ALWAYS_INLINE void warp_rows(const uint8_t* src, int src_h, int src_w, std::ptrdiff_t stride,
                                const double inv[6], uint8_t* dst, int out_h, int out_w) {
    const std::size_t n = static_cast<std::size_t>(out_w);
    RowCoords rc(n);
    // Interior pixels: all four taps inside, and for C = 3 the over-read byte too.
    const int last_x0 = src_w - (C == 3 ? 2 : 1);  // fast path needs x0 < last_x0
    const unsigned lim_x = static_cast<unsigned>(last_x0 > 0 ? last_x0 : 0);
    const unsigned lim_y = static_cast<unsigned>(src_h - 1);
    for (int y = 0; y < out_h; ++y) {
        rc.compute(inv, y, src_w, src_h);
        uint8_t* out = dst + static_cast<std::ptrdiff_t>(y) * static_cast<std::ptrdiff_t>(n * C);
        for (std::size_t x = 0; x < n; ++x) {
            const int x0 = rc.ix[x], y0 = rc.iy[x];
            uint8_t* o = out + x * C;
#if defined(LT_HAVE_PIXEL_SIMD)
            if (static_cast<unsigned>(x0) < lim_x && static_cast<unsigned>(y0) < lim_y) {
                const uint8_t* p = src + static_cast<std::ptrdiff_t>(y0) * stride +
                                   static_cast<std::ptrdiff_t>(x0) * C;
                interior_pixel_simd<C>(p, stride, rc.fx[x], rc.fy[x], o, x + 1 < n);
                continue;
            }
#else
            (void)lim_x;
            (void)lim_y;
#endif
            border_pixel<C>(src, stride, src_w, src_h, x0, y0, rc.fx[x], rc.fy[x], o);
        }
    }
}

// Single channel: gather the taps of a row, then interpolate the row in one vectorisable loop.
template <>
LT_ALWAYS_INLINE void warp_rows<1>(const uint8_t* src, int src_h, int src_w, std::ptrdiff_t stride,
                                   const double inv[6], uint8_t* dst, int out_h, int out_w) {
    const std::size_t n = static_cast<std::size_t>(out_w);
    RowCoords rc(n);
    std::vector<float> taps(4 * n);
    float* t00 = taps.data();
    float* t01 = t00 + n;
    float* t10 = t01 + n;
    float* t11 = t10 + n;
    for (int y = 0; y < out_h; ++y) {
        rc.compute(inv, y, src_w, src_h);
        for (std::size_t x = 0; x < n; ++x) {
            const int x0 = rc.ix[x], y0 = rc.iy[x];
            if (static_cast<unsigned>(x0) < static_cast<unsigned>(src_w - 1) &&
                static_cast<unsigned>(y0) < static_cast<unsigned>(src_h - 1)) {
                const uint8_t* p = src + static_cast<std::ptrdiff_t>(y0) * stride + x0;
                t00[x] = p[0];
                t01[x] = p[1];
                t10[x] = p[stride];
                t11[x] = p[stride + 1];
            } else {
                const bool in_x0 = x0 >= 0 && x0 < src_w, in_x1 = x0 + 1 >= 0 && x0 + 1 < src_w;
                const bool in_y0 = y0 >= 0 && y0 < src_h, in_y1 = y0 + 1 >= 0 && y0 + 1 < src_h;
                const uint8_t* r0 = src + static_cast<std::ptrdiff_t>(in_y0 ? y0 : 0) * stride;
                const uint8_t* r1 = src + static_cast<std::ptrdiff_t>(in_y1 ? y0 + 1 : 0) * stride;
                const int c0 = in_x0 ? x0 : 0, c1 = in_x1 ? x0 + 1 : 0;
                t00[x] = (in_y0 && in_x0) ? r0[c0] : 0.0f;
                t01[x] = (in_y0 && in_x1) ? r0[c1] : 0.0f;
                t10[x] = (in_y1 && in_x0) ? r1[c0] : 0.0f;
                t11[x] = (in_y1 && in_x1) ? r1[c1] : 0.0f;
            }
        }
        uint8_t* out = dst + static_cast<std::ptrdiff_t>(y) * static_cast<std::ptrdiff_t>(n);
        const float* fx = rc.fx.data();
        const float* fy = rc.fy.data();
        for (std::size_t x = 0; x < n; ++x)
            out[x] = interpolate(t00[x], t01[x], t10[x], t11[x], fx[x], fy[x]);
    }
}

}  // namespace warp_detail
}  // namespace lt
