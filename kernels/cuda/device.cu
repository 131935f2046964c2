// CUDA runtime probe (see cuda_api.h).
#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "cuda_api.h"

namespace lt {
namespace cuda {

DeviceInfo query_devices() {
    DeviceInfo info;
    int count = 0;
    const cudaError_t st = cudaGetDeviceCount(&count);
    if (st != cudaSuccess) {
        info.device_count = 0;
        info.error = std::string(cudaGetErrorName(st)) + ": " + cudaGetErrorString(st);
        (void)cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
        return info;
    }
    info.device_count = count;
    if (count == 0) info.error = "cudaGetDeviceCount reported 0 devices";
    return info;
}

namespace {

void check(cudaError_t st, const char* what) {
    if (st != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(st) + ": " +
                                 cudaGetErrorString(st));
    }
}

int attribute(cudaDeviceAttr a, int device) {
    int v = 0;
    check(cudaDeviceGetAttribute(&v, a, device), "cudaDeviceGetAttribute");
    return v;
}

}  // namespace

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

DeviceProperties device_properties(int device) {
    DeviceProperties p;
    char name[256] = {0};
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    std::snprintf(name, sizeof(name), "%s", prop.name);
    p.name = name;
    p.major = prop.major, p.minor = prop.minor;
    p.total_memory = prop.totalGlobalMem;
    p.sm_count = attribute(cudaDevAttrMultiProcessorCount, device);
    p.clock_khz = attribute(cudaDevAttrClockRate, device);
    p.memory_clock_khz = attribute(cudaDevAttrMemoryClockRate, device);
    p.memory_bus_width = attribute(cudaDevAttrGlobalMemoryBusWidth, device);
    p.smem_per_block_optin = attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    p.smem_per_sm = attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
    return p;
}

void* device_alloc(std::size_t nbytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, nbytes), "cudaMalloc");
    return p;
}

void device_free(void* ptr) { check(cudaFree(ptr), "cudaFree"); }

void copy_to_device(void* dst, const void* src, std::size_t nbytes) {
    check(cudaMemcpy(dst, src, nbytes, cudaMemcpyHostToDevice), "cudaMemcpy (host to device)");
}

}  // namespace cuda
}  // namespace lt
