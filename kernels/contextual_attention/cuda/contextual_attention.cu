// nvcc translation unit of the CUDA contextual attention (kernels and launcher: ca_kernels.cuh).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "contextual_attention/cuda/ca_kernels.cuh"
