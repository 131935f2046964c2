// Compiler helpers for picking the best x86-64 instruction set at load time.
//
// LT_TARGET_CLONES marks a function that GCC compiles several times (AVX-512, AVX2+FMA, baseline
// SSE2) and dispatches through an ifunc on first call. Only GCC on x86-64 Linux (glibc ifunc);
// elsewhere it expands to nothing and the baseline build is used. Functions inlined into a cloned
// function are compiled for each clone, so mark the hot helpers LT_ALWAYS_INLINE.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LT_TARGET_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LT_TARGET_CLONES
#endif

#if defined(__GNUC__)
#define LT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define LT_ALWAYS_INLINE inline
#endif
