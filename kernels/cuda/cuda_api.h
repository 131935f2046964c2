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

// Makes `device` current for this thread's CUDA runtime (cudaSetDevice). Throws std::runtime_error.
void set_device(int device);

// What the benchmarks need to compute a device's roofline (cudaDeviceGetAttribute values).
struct DeviceProperties {
    std::string name;
    int major = 0, minor = 0, sm_count = 0;
    int clock_khz = 0, memory_clock_khz = 0, memory_bus_width = 0;
    int smem_per_block_optin = 0, smem_per_sm = 0;
    std::size_t total_memory = 0;
};
DeviceProperties device_properties(int device);

// cudaMalloc / cudaFree / synchronous host-to-device copy (TensorRT INT8 calibration batches).
// Throw std::runtime_error on failure.
void* device_alloc(std::size_t nbytes);
void device_free(void* ptr);
void copy_to_device(void* dst, const void* src, std::size_t nbytes);

}  // namespace cuda
}  // namespace lt
