// A small CPU emulation of the CUDA subset used by kernels/contextual_attention/cuda/ca_kernels.cuh,
// so the exact kernel source runs (slowly) on machines without a GPU and can be checked against
// the golden reference (tests/test_contextual_attention_cuda_emu.py).
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks run one after the
// other. __syncthreads() switches to the scheduler, which resumes the fibers once all live fibers
// of the block wait at the same barrier (fibers at barriers on different source lines = divergent
// __syncthreads, reported as a launch failure). Between barriers the fibers run in a configurable
// order (forward, reverse or shuffled), which exposes missing barriers (a read that depends on
// another thread's write without a barrier between them gives different results for different
// orders). Dynamic shared memory is filled with 0xFF (float NaN) before each block, so reads of
// unwritten shared memory poison the result, and is surrounded by canaries checked after the block.
// Launch configuration is validated like the runtime does (block size, grid size, dynamic shared
// memory against the per-kernel attribute and the emulated device's opt-in limit).
//
// Not emulated: warp-level primitives (shuffles, votes), streams (launches are synchronous),
// texture / constant memory. Arithmetic is the host's float (no fused multiply-add unless the
// compiler contracts), so results differ from a GPU in the last bits only.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#define LT_CUDA_EMULATION 1

// ---- keywords --------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// ---- half ------------------------------------------------------------------------------------
struct __half {
    _Float16 v;
};
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline float __half2float(__half h) { return static_cast<float>(h.v); }

// ---- runtime API subset ----------------------------------------------------------------------
using cudaStream_t = struct CUstream_st*;
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr {
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
    cudaDevAttrMultiProcessorCount = 16,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

// Context switch: a minimal x86-64 SysV switch (callee-saved registers + stack pointer, ~100x
// cheaper than swapcontext, which makes a signal-mask system call); ucontext elsewhere.
#if defined(__x86_64__) && defined(__linux__) && !defined(LT_EMU_UCONTEXT)
#define LT_EMU_ASM_SWITCH 1
extern "C" void lt_emu_swap(void** save_sp, void* new_sp);
asm(R"(
    .text
    .globl lt_emu_swap
    .type lt_emu_swap, @function
lt_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lt_emu_swap, .-lt_emu_swap
    .section .note.GNU-stack,"",@progbits
    .text
)");
#endif

namespace lt_emu {

enum class Order { kForward = 0, kReverse = 1, kShuffle = 2 };

struct Device {
    int smem_per_block_optin = 99 * 1024;
    int smem_per_sm = 100 * 1024;
    int sm_count = 4;
    Order order = Order::kForward;
    unsigned seed = 1;
};

struct State {
    Device dev;
    cudaError_t last = cudaSuccess;
    std::string last_msg;
    std::map<const void*, int> max_dynamic_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
    long long blocks_run = 0, switches = 0;
};

inline State& state() {
    static State s;
    return s;
}

struct Fiber {
    ucontext_t ctx;
    void* sp = nullptr;  // saved stack pointer (asm switch)
    uint3 tid;
    int status = 0;  // 0 runnable, 1 waiting at a barrier, 2 finished
    int site = 0;    // source line of the barrier it waits at
};

struct Block {
    uint3 bidx;
    dim3 bdim, gdim;
    std::vector<Fiber> fibers;
    int cur = 0;
    ucontext_t sched;
    void* sched_sp = nullptr;
    std::function<void()> body;
    unsigned char* smem = nullptr;
    std::string error;  // set when a fiber or the scheduler detects a fault
};

inline Block*& block() {
    static thread_local Block* b = nullptr;
    return b;
}
inline Fiber* current() { return &block()->fibers[block()->cur]; }

constexpr std::size_t kStack = 256 * 1024;
constexpr std::size_t kGuard = 256;
constexpr unsigned char kCanary = 0xA5;

inline std::vector<std::unique_ptr<char[]>>& stacks() {
    static std::vector<std::unique_ptr<char[]>> s;
    return s;
}

inline void fiber_entry() {
    Block* b = block();
    b->body();
    b->fibers[b->cur].status = 2;  // ucontext: returning resumes the scheduler through uc_link
}

#if defined(LT_EMU_ASM_SWITCH)
[[noreturn]] inline void fiber_trampoline() {
    fiber_entry();
    Block* b = block();
    lt_emu_swap(&b->fibers[b->cur].sp, b->sched_sp);
    __builtin_unreachable();
}
#endif

inline void to_fiber(Block& b, int i) {
    b.cur = i;
    ++state().switches;
#if defined(LT_EMU_ASM_SWITCH)
    lt_emu_swap(&b.sched_sp, b.fibers[i].sp);
#else
    swapcontext(&b.sched, &b.fibers[i].ctx);
#endif
}

inline void syncthreads(int line) {
    Block* b = block();
    Fiber* f = current();
    f->status = 1;
    f->site = line;
    ++state().switches;
#if defined(LT_EMU_ASM_SWITCH)
    lt_emu_swap(&f->sp, b->sched_sp);
#else
    swapcontext(&f->ctx, &b->sched);
#endif
}

// Runs one block to completion. Returns false (and sets b.error) on a fault.
inline bool run_block(Block& b, unsigned round_seed) {
    const int n = static_cast<int>(b.fibers.size());
    while (static_cast<int>(stacks().size()) < n) stacks().emplace_back(new char[kStack]);
    for (int i = 0; i < n; ++i) {
        Fiber& f = b.fibers[i];
#if defined(LT_EMU_ASM_SWITCH)
        // initial frame: six callee-saved registers, then the "return address" lt_emu_swap's ret
        // jumps to; 16-byte aligned so the trampoline starts with the ABI's stack alignment
        auto top = reinterpret_cast<std::uintptr_t>(stacks()[i].get() + kStack) & ~std::uintptr_t(15);
        auto* frame = reinterpret_cast<void**>(top - 64);
        for (int r = 0; r < 6; ++r) frame[r] = nullptr;
        frame[6] = reinterpret_cast<void*>(&fiber_trampoline);
        frame[7] = nullptr;
        f.sp = frame;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks()[i].get();
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &b.sched;
        makecontext(&f.ctx, fiber_entry, 0);
#endif
        f.status = 0;
    }
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::mt19937 rng(round_seed);
    const Order mode = state().dev.order;
    while (true) {
        if (mode == Order::kReverse)
            std::reverse(order.begin(), order.end());  // alternate forward / reverse rounds
        else if (mode == Order::kShuffle)
            std::shuffle(order.begin(), order.end(), rng);
        for (int i : order) {
            if (b.fibers[i].status != 0) continue;
            to_fiber(b, i);
            if (!b.error.empty()) return false;
        }
        int waiting = 0, done = 0, site = -1;
        for (const Fiber& f : b.fibers) {
            if (f.status == 2) ++done;
            if (f.status == 1) {
                ++waiting;
                if (site >= 0 && f.site != site) {
                    b.error = "divergent __syncthreads (lines " + std::to_string(site) + " and " +
                              std::to_string(f.site) + ")";
                    return false;
                }
                site = f.site;
            }
        }
        if (done == n) return true;
        if (waiting + done == n) {
            if (done > 0) {
                b.error = "__syncthreads at line " + std::to_string(site) +
                          " reached after some threads of the block exited";
                return false;
            }
            for (Fiber& f : b.fibers) f.status = 0;
        }
    }
}

inline cudaError_t fail(cudaError_t e, const std::string& msg) {
    state().last = e;
    state().last_msg = msg;
    return e;
}

template <class K>
struct Launch {
    dim3 grid, blk;
    std::size_t smem;
    K kernel;
    template <class... A>
    void operator()(A... args) {
        State& st = state();
        const unsigned nthreads = blk.x * blk.y * blk.z;
        if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
            grid.y > 65535 || grid.z > 65535) {
            fail(cudaErrorInvalidConfiguration, "invalid launch configuration");
            return;
        }
        int allowed = 48 * 1024;
        auto it = st.max_dynamic_smem.find(reinterpret_cast<const void*>(kernel));
        if (it != st.max_dynamic_smem.end()) allowed = it->second;
        if (smem > static_cast<std::size_t>(allowed) ||
            smem > static_cast<std::size_t>(st.dev.smem_per_block_optin)) {
            fail(cudaErrorInvalidValue, "dynamic shared memory " + std::to_string(smem) +
                                            " bytes over the kernel attribute / device limit");
            return;
        }
        std::vector<unsigned char> shared(smem + 2 * kGuard);
        for (unsigned bz = 0; bz < grid.z; ++bz)
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    Block b;
                    b.bidx = {bx, by, bz};
                    b.bdim = blk;
                    b.gdim = grid;
                    std::memset(shared.data(), kCanary, kGuard);
                    std::memset(shared.data() + kGuard, 0xFF, smem);
                    std::memset(shared.data() + kGuard + smem, kCanary, kGuard);
                    b.smem = shared.data() + kGuard;
                    b.fibers.resize(nthreads);
                    for (unsigned i = 0; i < nthreads; ++i)
                        b.fibers[i].tid = {i % blk.x, (i / blk.x) % blk.y, i / (blk.x * blk.y)};
                    b.body = [&]() { kernel(args...); };
                    block() = &b;
                    const bool ok =
                        run_block(b, st.dev.seed * 2654435761u + bx + 7919u * by + 104729u * bz);
                    block() = nullptr;
                    ++st.blocks_run;
                    for (std::size_t i = 0; ok && i < kGuard; ++i)
                        if (shared[i] != kCanary || shared[kGuard + smem + i] != kCanary)
                            b.error = "shared memory written out of bounds";
                    if (!b.error.empty()) {
                        fail(cudaErrorLaunchFailure,
                             "block (" + std::to_string(bx) + ", " + std::to_string(by) + ", " +
                                 std::to_string(bz) + "): " + b.error);
                        return;
                    }
                }
    }
};

template <class K>
Launch<K> make_launch(dim3 grid, dim3 blk, std::size_t smem, cudaStream_t, K kernel) {
    return Launch<K>{grid, blk, smem, kernel};
}

inline unsigned char* shared_memory() { return block()->smem; }

}  // namespace lt_emu

#define threadIdx (::lt_emu::current()->tid)
#define blockIdx (::lt_emu::block()->bidx)
#define blockDim (::lt_emu::block()->bdim)
#define gridDim (::lt_emu::block()->gdim)
#define __syncthreads() ::lt_emu::syncthreads(__LINE__)
#define LT_DYNAMIC_SMEM(name) float* name = reinterpret_cast<float*>(::lt_emu::shared_memory())
#define LT_LAUNCH(kernel, grid, block, smem, stream) \
    ::lt_emu::make_launch(grid, block, smem, stream, kernel)

inline unsigned atomicOr(unsigned* a, unsigned v) {
    const unsigned old = *a;
    *a = old | v;
    return old;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }

inline cudaError_t cudaGetLastError() {
    const cudaError_t e = lt_emu::state().last;
    lt_emu::state().last = cudaSuccess;
    return e;
}
inline const char* cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        default: return "cudaErrorLaunchFailure";
    }
}
inline const char* cudaGetErrorString(cudaError_t) { return lt_emu::state().last_msg.c_str(); }
inline cudaError_t cudaGetDevice(int* d) {
    *d = 0;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
    const lt_emu::Device& d = lt_emu::state().dev;
    switch (a) {
        case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = d.smem_per_block_optin; break;
        case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = d.smem_per_sm; break;
        case cudaDevAttrMultiProcessorCount: *v = d.sm_count; break;
        default: return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F* f, cudaFuncAttribute, int v) {
    if (v > lt_emu::state().dev.smem_per_block_optin)
        return lt_emu::fail(cudaErrorInvalidValue, "cudaFuncSetAttribute over the opt-in limit");
    lt_emu::state().max_dynamic_smem[reinterpret_cast<const void*>(f)] = v;
    return cudaSuccess;
}
