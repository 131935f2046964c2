// Host-side interface of the optional CUDA back end (implemented in device.cu and warp.cu).
// Plain C++ so that bindings.cpp can include it; only declared when built with CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lt {
namespace cuda {

// Result of probing the CUDA runtime. `error` is empty when the probe succeeded.
struct DeviceInfo {
    int device_count = 0;
    std::string error;
};

// Calls cudaGetDeviceCount. Never throws: on a machine without a driver or GPU the runtime's
// error (e.g. "cudaErrorInsufficientDriver: ...") is returned in `error` with device_count 0.
DeviceInfo query_devices();

// GPU version of lt::warp_affine (same arguments, same semantics, see align/warp.h): copies the
// source to the current device, warps there, and copies the result back into `dst` (host memory,
// out_h * out_w * channels bytes). Throws std::invalid_argument for bad arguments and
// std::runtime_error for CUDA failures.
void warp_affine(const uint8_t* src, int src_h, int src_w, int channels,
                 std::ptrdiff_t src_row_stride, const double m[6], uint8_t* dst, int out_h,
                 int out_w);

}  // namespace cuda
}  // namespace lt
