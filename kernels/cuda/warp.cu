// CUDA bilinear affine warp (see cuda_api.h). One thread per output pixel; the per-pixel
// arithmetic is the same header as the CPU version (align/bilinear.h).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../align/bilinear.h"
#include "cuda_api.h"

namespace lt {
namespace cuda {
namespace {

struct InverseMap {
    double m[6];
};

template <int C>
__global__ void warp_kernel(const uint8_t* src, std::size_t src_pitch, int src_h, int src_w,
                            InverseMap inv, uint8_t* dst, int out_h, int out_w) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    float row_x, row_y;
    map_row(inv.m, y, &row_x, &row_y);
    const float fx = static_cast<float>(x);
    const float sx = static_cast<float>(inv.m[0]) * fx + row_x;
    const float sy = static_cast<float>(inv.m[3]) * fx + row_y;
    sample_bilinear<C>(src, static_cast<std::ptrdiff_t>(src_pitch), src_w, src_h, sx, sy,
                       dst + (static_cast<std::size_t>(y) * out_w + x) * C);
}

void check(cudaError_t st, const char* what) {
    if (st != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error(std::string("warp_affine_cuda: ") + what + " failed: " +
                                 cudaGetErrorName(st) + ": " + cudaGetErrorString(st));
    }
}

// Frees device buffers on every exit path.
struct DeviceBuffer {
    void* ptr = nullptr;
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
};

}  // namespace

void warp_affine(const uint8_t* src, int src_h, int src_w, int channels,
                 std::ptrdiff_t src_row_stride, const double m[6], uint8_t* dst, int out_h,
                 int out_w) {
    if (src_h < 1 || src_w < 1) throw std::invalid_argument("warp_affine_cuda: empty source image");
    if (out_h < 1 || out_w < 1) throw std::invalid_argument("warp_affine_cuda: empty output size");
    if (channels != 1 && channels != 3 && channels != 4)
        throw std::invalid_argument("warp_affine_cuda: channels must be 1, 3 or 4");
    InverseMap inv;
    if (!invert_affine(m, inv.m))
        throw std::invalid_argument("warp_affine_cuda: M is singular or not finite");

    const std::size_t row_bytes = static_cast<std::size_t>(src_w) * channels;
    const std::size_t out_bytes = static_cast<std::size_t>(out_h) * out_w * channels;
    DeviceBuffer d_src, d_dst;
    std::size_t pitch = 0;
    check(cudaMallocPitch(&d_src.ptr, &pitch, row_bytes, static_cast<std::size_t>(src_h)),
          "cudaMallocPitch");
    check(cudaMalloc(&d_dst.ptr, out_bytes), "cudaMalloc");
    check(cudaMemcpy2D(d_src.ptr, pitch, src, static_cast<std::size_t>(src_row_stride), row_bytes,
                       static_cast<std::size_t>(src_h), cudaMemcpyHostToDevice),
          "cudaMemcpy2D (upload)");

    const dim3 block(32, 8);
    const dim3 grid((out_w + block.x - 1) / block.x, (out_h + block.y - 1) / block.y);
    const auto* s = static_cast<const uint8_t*>(d_src.ptr);
    auto* d = static_cast<uint8_t*>(d_dst.ptr);
    switch (channels) {
        case 1:
            warp_kernel<1><<<grid, block>>>(s, pitch, src_h, src_w, inv, d, out_h, out_w);
            break;
        case 3:
            warp_kernel<3><<<grid, block>>>(s, pitch, src_h, src_w, inv, d, out_h, out_w);
            break;
        default:
            warp_kernel<4><<<grid, block>>>(s, pitch, src_h, src_w, inv, d, out_h, out_w);
            break;
    }
    check(cudaGetLastError(), "kernel launch");
    check(cudaMemcpy(dst, d_dst.ptr, out_bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (download)");
}

}  // namespace cuda
}  // namespace lt
