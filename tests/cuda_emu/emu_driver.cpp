// Runs the CUDA contextual attention (kernels/contextual_attention/cuda/ca_kernels.cuh) on the CPU
// emulation in cuda_emu.h. Driven by tests/test_contextual_attention_cuda_emu.py:
//
//   emu_driver IN OUT
//
// IN : "LTCA", int64[20] = B, C, Hf, Wf, Hb, Wb, mask_batch, dtype (0 f32, 1 f16), ksize, stride,
//      rate, fuse_k, fuse, want_attention, smem_per_block_optin, smem_per_sm, sm_count, order
//      (0 forward, 1 reverse, 2 shuffle), seed, 0; float64 softmax_scale; then f, b, mask (if
//      mask_batch > 0) as raw arrays of the dtype.
// OUT: int64 status (0 ok), int64 n + n bytes message (the plan JSON, or the error), int64
//      blocks run, int64 fiber switches; then y and (if wanted) the attention, raw, of the dtype.
//
// Inputs, outputs and the workspace sit between guard zones: the output and workspace are filled
// with 0xFF (NaN) first, and a write outside any buffer is reported as an error.
#include "cuda_emu.h"
// clang-format off
#include "contextual_attention/cuda/ca_kernels.cuh"
// clang-format on

#include <fstream>
#include <iostream>
#include <stdexcept>

namespace {

constexpr std::size_t kPad = 4096;

// A buffer with guard zones on both sides (filled with `fill` inside, a canary outside).
struct Guarded {
    std::vector<unsigned char> mem;
    std::size_t bytes;
    Guarded(std::size_t n, unsigned char fill) : mem(n + 2 * kPad + 256, 0x5A), bytes(n) {
        std::memset(data(), fill, n);
    }
    unsigned char* data() {
        auto addr = reinterpret_cast<std::uintptr_t>(mem.data() + kPad);
        return reinterpret_cast<unsigned char*>((addr + 255) / 256 * 256);  // 256-byte aligned
    }
    bool intact() {
        const unsigned char* d = data();
        for (const unsigned char* p = mem.data(); p < d; ++p)
            if (*p != 0x5A) return false;
        for (const unsigned char* p = d + bytes; p < mem.data() + mem.size(); ++p)
            if (*p != 0x5A) return false;
        return true;
    }
};

void put_i64(std::ofstream& o, int64_t v) { o.write(reinterpret_cast<const char*>(&v), 8); }

int finish(const char* path, int64_t status, const std::string& msg, Guarded* y, Guarded* att) {
    std::ofstream o(path, std::ios::binary);
    put_i64(o, status);
    put_i64(o, static_cast<int64_t>(msg.size()));
    o.write(msg.data(), static_cast<std::streamsize>(msg.size()));
    put_i64(o, lt_emu::state().blocks_run);
    put_i64(o, lt_emu::state().switches);
    if (status == 0) {
        o.write(reinterpret_cast<const char*>(y->data()), static_cast<std::streamsize>(y->bytes));
        if (att)
            o.write(reinterpret_cast<const char*>(att->data()),
                    static_cast<std::streamsize>(att->bytes));
    }
    return status == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: emu_driver IN OUT\n";
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    char magic[4];
    int64_t h[20];
    double scale = 0;
    in.read(magic, 4);
    in.read(reinterpret_cast<char*>(h), sizeof(h));
    in.read(reinterpret_cast<char*>(&scale), 8);
    if (!in || std::memcmp(magic, "LTCA", 4) != 0) {
        std::cerr << "bad input file\n";
        return 2;
    }
    lt::cuda::CaShape s;
    s.B = h[0], s.C = h[1], s.Hf = h[2], s.Wf = h[3], s.Hb = h[4], s.Wb = h[5], s.mask_batch = h[6];
    const auto dtype = h[7] ? lt::cuda::DType::kFloat16 : lt::cuda::DType::kFloat32;
    const std::size_t es = h[7] ? 2 : 4;
    lt::ContextualAttentionParams prm;
    prm.ksize = static_cast<int>(h[8]), prm.stride = static_cast<int>(h[9]);
    prm.rate = static_cast<int>(h[10]), prm.fuse_k = static_cast<int>(h[11]);
    prm.fuse = h[12] != 0, prm.softmax_scale = scale;
    const bool want_att = h[13] != 0;
    lt_emu::Device& dev = lt_emu::state().dev;
    dev.smem_per_block_optin = static_cast<int>(h[14]);
    dev.smem_per_sm = static_cast<int>(h[15]);
    dev.sm_count = static_cast<int>(h[16]);
    dev.order = static_cast<lt_emu::Order>(h[17]);
    dev.seed = static_cast<unsigned>(h[18]);

    const std::size_t nf = s.B * s.C * s.Hf * s.Wf, nb = s.B * s.C * s.Hb * s.Wb;
    const std::size_t nm = s.mask_batch * s.Hb * s.Wb;
    Guarded f(nf * es, 0), b(nb * es, 0), m(nm * es + 1, 0);
    in.read(reinterpret_cast<char*>(f.data()), static_cast<std::streamsize>(nf * es));
    in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(nb * es));
    if (nm) in.read(reinterpret_cast<char*>(m.data()), static_cast<std::streamsize>(nm * es));
    if (!in) {
        std::cerr << "truncated input file\n";
        return 2;
    }
    try {
        const std::size_t wsb = lt::cuda::contextual_attention_workspace_bytes(s, prm, dtype);
        const std::string plan = lt::cuda::contextual_attention_plan(s, prm);
        const lt::ca::Geometry g =
            lt::ca::make_geometry(s.B, s.C, s.Hf, s.Wf, s.Hb, s.Wb, s.mask_batch, prm);
        Guarded ws(wsb, 0xFF), y(nf * es, 0xFF);
        Guarded att(want_att ? static_cast<std::size_t>(s.B) * g.L * g.Pf * es : 1, 0xFF);
        lt::cuda::contextual_attention_forward(f.data(), b.data(), nm ? m.data() : nullptr,
                                               y.data(), want_att ? att.data() : nullptr,
                                               ws.data(), wsb, s, prm, dtype, nullptr);
        if (!ws.intact() || !y.intact() || !att.intact() || !f.intact() || !b.intact() ||
            !m.intact())
            return finish(argv[2], 3, "a kernel wrote outside its buffers", nullptr, nullptr);
        return finish(argv[2], 0, plan, &y, want_att ? &att : nullptr);
    } catch (const std::exception& e) {
        return finish(argv[2], 1, e.what(), nullptr, nullptr);
    }
}
