// Face alignment kernels: least-squares similarity estimation and bilinear affine warping.
// Plain C++ (no Python, no CUDA); errors are reported with std::invalid_argument.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace lt {

// Least-squares similarity transform (rotation + uniform scale + translation, never a reflection)
// mapping src points onto dst points: Umeyama (1991) closed form specialised to 2-D.
//   src, dst: n points each, row-major (x, y) pairs, any consistent unit (pixels); n >= 2.
//   returns:  row-major 2x3 matrix [a -b tx; b a ty] with dst ~= M * [x y 1]^T.
// Throws std::invalid_argument when n < 2, a coordinate is not finite, or all src points coincide.
std::array<double, 6> estimate_similarity(const double* src, const double* dst, std::size_t n);

// Warps an interleaved uint8 image with an affine map, bilinear, constant-0 border.
//   src:         top-left pixel; rows are `src_row_stride` bytes apart, pixels `channels` bytes.
//   src_h/src_w: source size in pixels (>= 1); channels in {1, 3, 4} (colour order is untouched).
//   m:           row-major 2x3 matrix mapping SOURCE -> DESTINATION pixel coordinates
//                (the matrix cv2.warpAffine takes without WARP_INVERSE_MAP).
//   dst:         out_h * out_w * channels bytes, contiguous, written completely.
// Matches cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT, 0) to within 1 grey level.
// Throws std::invalid_argument for a singular / non-finite matrix or bad sizes.
void warp_affine(const uint8_t* src, int src_h, int src_w, int channels,
                 std::ptrdiff_t src_row_stride, const double m[6], uint8_t* dst, int out_h,
                 int out_w);

}  // namespace lt
