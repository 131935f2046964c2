// CUDA runtime probe (see cuda_api.h).
#include <cuda_runtime.h>

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

}  // namespace cuda
}  // namespace lt
