// Python bindings of the C++ core: module `sdk._core`.
//
// This file only validates and converts NumPy inputs, releases the GIL and calls the plain C++
// kernels (align/warp.h, search/topk.h, cuda/cuda_api.h). Error mapping:
//   wrong dtype / not an array            -> TypeError
//   wrong ndim / shape / size / values    -> ValueError
//   CUDA unavailable or failing           -> RuntimeError
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "align/warp.h"
#include "contextual_attention/contextual_attention.h"
#include "contextual_attention/cuda/plan.h"
#include "search/topk.h"
#if defined(LOOKTHROUGH_WITH_CUDA)
#include "contextual_attention/cuda/ca_cuda.h"
#include "cuda/cuda_api.h"
#endif

#ifndef LOOKTHROUGH_VERSION
#define LOOKTHROUGH_VERSION "0.0.0+unknown"
#endif
#ifndef LOOKTHROUGH_CUDA_ARCHS
#define LOOKTHROUGH_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
using F32 = py::array_t<float, py::array::c_style>;
using U8 = py::array_t<uint8_t, py::array::c_style>;

constexpr int64_t kMaxOutSide = 16384;         // largest accepted output height / width
constexpr int64_t kMaxSrcSide = int64_t(1) << 24;  // float32 pixel coordinates stay exact

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// np.asarray(obj) without copying arrays; TypeError if that is impossible.
py::array as_array(const py::handle& obj, const std::string& what) {
    py::array a = py::array::ensure(obj);
    if (!a) {
        PyErr_Clear();
        throw py::type_error(what + " must be a numpy array (or array-like), got " +
                             py::str(py::type::handle_of(obj)).cast<std::string>());
    }
    return a;
}

// Real numeric array -> C-contiguous float64 (a lossless cast for float32 / small ints).
F64 as_float64(const py::handle& obj, const std::string& what) {
    py::array a = as_array(obj, what);
    const char kind = a.dtype().kind();
    if (kind != 'f' && kind != 'i' && kind != 'u')
        throw py::type_error(what + " must hold real numbers, got dtype " + dtype_str(a));
    auto out = F64::ensure(a);
    if (!out) throw py::error_already_set();
    return out;
}

// float32 array with the given ndim -> C-contiguous float32 (copies only if strided).
F32 as_float32_2d(const py::handle& obj, const std::string& what) {
    py::array a = as_array(obj, what);
    if (!a.dtype().is(py::dtype::of<float>()))
        throw py::type_error(what + " must have dtype float32, got " + dtype_str(a) +
                             " (convert with .astype(np.float32))");
    if (a.ndim() != 2)
        throw py::value_error(what + " must be 2-D (rows, dim), got shape " + shape_str(a));
    auto out = F32::ensure(a);
    if (!out) throw py::error_already_set();
    return out;
}

// A validated uint8 image with rows that may be padded (e.g. a crop view of a larger frame).
struct Image {
    py::array keep;  // owns the memory while the kernel runs
    const uint8_t* data = nullptr;
    int h = 0, w = 0, c = 0;
    bool has_channel_axis = false;
    std::ptrdiff_t row_stride = 0;
};

Image as_image(const py::handle& obj) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error("image must be a numpy.ndarray of dtype uint8, got " +
                             py::str(py::type::handle_of(obj)).cast<std::string>());
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<uint8_t>()))
        throw py::type_error("image must have dtype uint8, got " + dtype_str(a));
    if (a.ndim() != 2 && a.ndim() != 3)
        throw py::value_error("image must be HxW or HxWxC, got shape " + shape_str(a));
    Image im;
    im.has_channel_axis = a.ndim() == 3;
    const int64_t c = im.has_channel_axis ? a.shape(2) : 1;
    if (c != 1 && c != 3 && c != 4)
        throw py::value_error("image must have 1, 3 or 4 channels, got shape " + shape_str(a));
    if (a.shape(0) < 1 || a.shape(1) < 1)
        throw py::value_error("image is empty, shape " + shape_str(a));
    if (a.shape(0) > kMaxSrcSide || a.shape(1) > kMaxSrcSide)
        throw py::value_error("image is too large, shape " + shape_str(a));
    // Rows may be padded; pixels and channels must be packed. Anything else is copied.
    const bool packed = a.strides(1) == c && (!im.has_channel_axis || a.strides(2) == 1) &&
                        a.strides(0) >= a.shape(1) * c;
    if (!packed) {
        a = U8::ensure(a);
        if (!a) throw py::error_already_set();
    }
    im.keep = a;
    im.data = static_cast<const uint8_t*>(a.data());
    im.h = static_cast<int>(a.shape(0));
    im.w = static_cast<int>(a.shape(1));
    im.c = static_cast<int>(c);
    im.row_stride = a.strides(0);
    return im;
}

std::array<double, 6> as_matrix(const py::handle& obj) {
    auto m = as_float64(obj, "M");
    if (m.ndim() != 2 || m.shape(0) != 2 || m.shape(1) != 3)
        throw py::value_error("M must have shape (2, 3), got " + shape_str(m));
    std::array<double, 6> out;
    const double* p = m.data();
    for (int i = 0; i < 6; ++i) {
        if (!std::isfinite(p[i])) throw py::value_error("M must be finite");
        out[i] = p[i];
    }
    return out;
}

void check_out_size(int64_t out_h, int64_t out_w) {
    if (out_h < 1 || out_w < 1 || out_h > kMaxOutSide || out_w > kMaxOutSide)
        throw py::value_error("output size must be in [1, " + std::to_string(kMaxOutSide) +
                              "], got out_h=" + std::to_string(out_h) +
                              ", out_w=" + std::to_string(out_w));
}

py::array_t<uint8_t> alloc_like(const Image& im, int64_t out_h, int64_t out_w) {
    if (im.has_channel_axis)
        return py::array_t<uint8_t>({static_cast<py::ssize_t>(out_h),
                                     static_cast<py::ssize_t>(out_w),
                                     static_cast<py::ssize_t>(im.c)});
    return py::array_t<uint8_t>({static_cast<py::ssize_t>(out_h), static_cast<py::ssize_t>(out_w)});
}

py::array_t<double> estimate_similarity(const py::handle& src_obj, const py::handle& dst_obj) {
    auto src = as_float64(src_obj, "src");
    auto dst = as_float64(dst_obj, "dst");
    if (src.ndim() != 2 || src.shape(1) != 2)
        throw py::value_error("src must have shape (N, 2), got " + shape_str(src));
    if (dst.ndim() != 2 || dst.shape(1) != 2)
        throw py::value_error("dst must have shape (N, 2), got " + shape_str(dst));
    if (src.shape(0) != dst.shape(0))
        throw py::value_error("src and dst must have the same number of points, got " +
                              shape_str(src) + " and " + shape_str(dst));
    if (src.shape(0) < 2)
        throw py::value_error("estimate_similarity needs at least 2 points, got " +
                              shape_str(src));
    std::array<double, 6> m;
    {
        py::gil_scoped_release nogil;
        m = lt::estimate_similarity(src.data(), dst.data(), static_cast<std::size_t>(src.shape(0)));
    }
    py::array_t<double> out({2, 3});
    std::copy(m.begin(), m.end(), out.mutable_data());
    return out;
}

py::array_t<uint8_t> warp_affine(const py::handle& image, const py::handle& m_obj, int64_t out_h,
                                 int64_t out_w) {
    Image im = as_image(image);
    const auto m = as_matrix(m_obj);
    check_out_size(out_h, out_w);
    auto out = alloc_like(im, out_h, out_w);
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        lt::warp_affine(im.data, im.h, im.w, im.c, im.row_stride, m.data(), dst,
                        static_cast<int>(out_h), static_cast<int>(out_w));
    }
    return out;
}

py::dict cuda_info() {
    py::dict d;
#if defined(LOOKTHROUGH_WITH_CUDA)
    lt::cuda::DeviceInfo info;
    {
        py::gil_scoped_release nogil;
        info = lt::cuda::query_devices();
    }
    d["compiled"] = true;
    d["device_count"] = info.device_count;
    d["error"] = info.error.empty() ? py::object(py::none()) : py::object(py::str(info.error));
#else
    d["compiled"] = false;
    d["device_count"] = 0;
    d["error"] = py::str("built without CUDA");
#endif
    return d;
}

py::array_t<uint8_t> warp_affine_cuda(const py::handle& image, const py::handle& m_obj,
                                      int64_t out_h, int64_t out_w) {
    Image im = as_image(image);
    const auto m = as_matrix(m_obj);
    check_out_size(out_h, out_w);
#if defined(LOOKTHROUGH_WITH_CUDA)
    lt::cuda::DeviceInfo info;
    {
        py::gil_scoped_release nogil;
        info = lt::cuda::query_devices();
    }
    if (info.device_count < 1)
        throw std::runtime_error("no CUDA device: " + info.error);
    auto out = alloc_like(im, out_h, out_w);
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        lt::cuda::warp_affine(im.data, im.h, im.w, im.c, im.row_stride, m.data(), dst,
                              static_cast<int>(out_h), static_cast<int>(out_w));
    }
    return out;
#else
    (void)im;
    (void)m;
    throw std::runtime_error("built without CUDA");
#endif
}

py::tuple topk_cosine(const py::handle& gallery_obj, const py::handle& queries_obj, int64_t k) {
    auto gallery = as_float32_2d(gallery_obj, "gallery");
    auto queries = as_float32_2d(queries_obj, "queries");
    if (gallery.shape(1) != queries.shape(1))
        throw py::value_error("dimension mismatch: gallery rows have D=" +
                              std::to_string(gallery.shape(1)) + ", queries have D=" +
                              std::to_string(queries.shape(1)));
    if (queries.shape(1) < 1) throw py::value_error("embedding dimension D must be >= 1");
    if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
    const int64_t n = gallery.shape(0), q = queries.shape(0), d = queries.shape(1);
    const int64_t kk = std::min(k, n);
    py::array_t<int64_t> idx({static_cast<py::ssize_t>(q), static_cast<py::ssize_t>(kk)});
    py::array_t<float> scores({static_cast<py::ssize_t>(q), static_cast<py::ssize_t>(kk)});
    int64_t* pi = idx.mutable_data();
    float* ps = scores.mutable_data();
    const float* g = gallery.data();
    const float* qs = queries.data();
    {
        py::gil_scoped_release nogil;
        lt::topk_cosine(g, n, d, qs, q, k, pi, ps);
    }
    return py::make_tuple(idx, scores);
}

// float32 (B, C, H, W) -> C-contiguous float32 (copies only if strided).
F32 as_float32_4d(const py::handle& obj, const std::string& what) {
    py::array a = as_array(obj, what);
    if (!a.dtype().is(py::dtype::of<float>()))
        throw py::type_error(what + " must have dtype float32, got " + dtype_str(a) +
                             " (convert with .astype(np.float32))");
    if (a.ndim() != 4)
        throw py::value_error(what + " must be 4-D (B, C, H, W), got shape " + shape_str(a));
    auto out = F32::ensure(a);
    if (!out) throw py::error_already_set();
    return out;
}

py::tuple contextual_attention(const py::handle& f_obj, const py::handle& b_obj,
                               const py::handle& mask_obj, int ksize, int stride, int rate,
                               int fuse_k, double softmax_scale, bool fuse) {
    auto f = as_float32_4d(f_obj, "f");
    auto b = as_float32_4d(b_obj, "b");
    if (f.shape(0) != b.shape(0) || f.shape(1) != b.shape(1))
        throw py::value_error("f and b must have equal B and C; got " + shape_str(f) + " and " +
                              shape_str(b));
    const int64_t B = f.shape(0), C = f.shape(1), Hf = f.shape(2), Wf = f.shape(3);
    const int64_t Hb = b.shape(2), Wb = b.shape(3);
    F32 mask;
    int64_t mask_batch = 0;
    if (!mask_obj.is_none()) {
        mask = as_float32_4d(mask_obj, "mask");
        if (mask.shape(1) != 1 || mask.shape(2) != Hb || mask.shape(3) != Wb ||
            (mask.shape(0) != 1 && mask.shape(0) != B))
            throw py::value_error("mask must be (B or 1, 1, Hb, Wb) = (.., 1, " +
                                  std::to_string(Hb) + ", " + std::to_string(Wb) + "); got " +
                                  shape_str(mask));
        mask_batch = mask.shape(0);
    }
    lt::ContextualAttentionParams prm;
    prm.ksize = ksize, prm.stride = stride, prm.rate = rate, prm.fuse_k = fuse_k;
    prm.softmax_scale = softmax_scale, prm.fuse = fuse;
    lt::ContextualAttentionShape sh;
    try {
        sh = lt::contextual_attention_shape(C, Hf, Wf, Hb, Wb, prm);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    using S = py::ssize_t;
    py::array_t<float> y({S(B), S(C), S(Hf), S(Wf)});
    py::array_t<float> att({S(B), S(sh.gh * sh.gw), S(sh.hf), S(sh.wf)});
    const float* pf = f.data();
    const float* pb = b.data();
    const float* pm = mask_batch ? mask.data() : nullptr;
    float* py_ = y.mutable_data();
    float* pa = att.mutable_data();
    {
        py::gil_scoped_release nogil;
        lt::contextual_attention(pf, pb, pm, mask_batch, B, C, Hf, Wf, Hb, Wb, prm, py_, pa);
    }
    return py::make_tuple(y, att);
}

// ---------------------------------------------------------------- CUDA contextual attention
// Device memory is passed as integer addresses (torch's tensor.data_ptr()), the stream as an
// integer cudaStream_t (torch.cuda.current_stream().cuda_stream): no copies, no torch here.

lt::ContextualAttentionParams ca_params(int ksize, int stride, int rate, int fuse_k,
                                        double softmax_scale, bool fuse) {
    lt::ContextualAttentionParams prm;
    prm.ksize = ksize, prm.stride = stride, prm.rate = rate, prm.fuse_k = fuse_k;
    prm.softmax_scale = softmax_scale, prm.fuse = fuse;
    return prm;
}

std::size_t ca_elem_size(const std::string& dtype) {
    if (dtype == "float32") return 4;
    if (dtype == "float16") return 2;
    throw py::value_error("dtype must be 'float32' or 'float16', got '" + dtype + "'");
}

py::dict contextual_attention_cuda_sizes(int64_t B, int64_t C, int64_t Hf, int64_t Wf, int64_t Hb,
                                         int64_t Wb, int64_t mask_batch, const std::string& dtype,
                                         int ksize, int stride, int rate, int fuse_k, bool fuse) {
    const std::size_t es = ca_elem_size(dtype);
    lt::ca::Geometry g;
    try {
        g = lt::ca::make_geometry(B, C, Hf, Wf, Hb, Wb, mask_batch,
                                  ca_params(ksize, stride, rate, fuse_k, 1.0, fuse));
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    py::dict d;
    d["workspace_bytes"] = lt::ca::workspace_layout(g, es).total;
    d["patches"] = g.L;
    d["grid"] = py::make_tuple(g.gh, g.gw);
    d["fg_grid"] = py::make_tuple(g.hf, g.wf);
    return d;
}

#if defined(LOOKTHROUGH_WITH_CUDA)
void require_device(int device) {
    lt::cuda::DeviceInfo info = lt::cuda::query_devices();
    if (info.device_count < 1) throw std::runtime_error("no CUDA device: " + info.error);
    if (device < 0 || device >= info.device_count)
        throw py::value_error("CUDA device " + std::to_string(device) + " does not exist (" +
                              std::to_string(info.device_count) + " visible)");
    lt::cuda::set_device(device);
}
#endif

void contextual_attention_cuda(uintptr_t f, uintptr_t b, uintptr_t mask, uintptr_t y,
                               uintptr_t attention, uintptr_t workspace, std::size_t ws_bytes,
                               int64_t B, int64_t C, int64_t Hf, int64_t Wf, int64_t Hb,
                               int64_t Wb, int64_t mask_batch, const std::string& dtype,
                               int ksize, int stride, int rate, int fuse_k, double softmax_scale,
                               bool fuse, uintptr_t stream, int device) {
    const std::size_t es = ca_elem_size(dtype);
    const auto prm = ca_params(ksize, stride, rate, fuse_k, softmax_scale, fuse);
    try {
        lt::ca::make_geometry(B, C, Hf, Wf, Hb, Wb, mask_batch, prm);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    if (B > 0 && (!f || !b || !y || !workspace))
        throw py::value_error("f, b, y and workspace must be non-null device addresses");
    if ((mask != 0) != (mask_batch != 0))
        throw py::value_error("pass a mask address exactly when mask_batch > 0");
    (void)es;
#if defined(LOOKTHROUGH_WITH_CUDA)
    py::gil_scoped_release nogil;
    require_device(device);
    lt::cuda::CaShape sh;
    sh.B = B, sh.C = C, sh.Hf = Hf, sh.Wf = Wf, sh.Hb = Hb, sh.Wb = Wb, sh.mask_batch = mask_batch;
    lt::cuda::contextual_attention_forward(
        reinterpret_cast<const void*>(f), reinterpret_cast<const void*>(b),
        reinterpret_cast<const void*>(mask), reinterpret_cast<void*>(y),
        reinterpret_cast<void*>(attention), reinterpret_cast<void*>(workspace), ws_bytes, sh, prm,
        dtype == "float16" ? lt::cuda::DType::kFloat16 : lt::cuda::DType::kFloat32,
        reinterpret_cast<void*>(stream));
#else
    (void)f, (void)b, (void)mask, (void)y, (void)attention, (void)workspace, (void)ws_bytes;
    (void)stream, (void)device;
    throw std::runtime_error("built without CUDA");
#endif
}

std::string contextual_attention_cuda_plan(int64_t B, int64_t C, int64_t Hf, int64_t Wf,
                                           int64_t Hb, int64_t Wb, int64_t mask_batch, int ksize,
                                           int stride, int rate, int fuse_k, bool fuse,
                                           int device) {
    const auto prm = ca_params(ksize, stride, rate, fuse_k, 1.0, fuse);
    try {
        lt::ca::make_geometry(B, C, Hf, Wf, Hb, Wb, mask_batch, prm);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
#if defined(LOOKTHROUGH_WITH_CUDA)
    require_device(device);
    lt::cuda::CaShape sh;
    sh.B = B, sh.C = C, sh.Hf = Hf, sh.Wf = Wf, sh.Hb = Hb, sh.Wb = Wb, sh.mask_batch = mask_batch;
    return lt::cuda::contextual_attention_plan(sh, prm);
#else
    (void)device;
    throw std::runtime_error("built without CUDA");
#endif
}

py::dict cuda_device_properties(int device) {
#if defined(LOOKTHROUGH_WITH_CUDA)
    require_device(device);
    const lt::cuda::DeviceProperties p = lt::cuda::device_properties(device);
    py::dict d;
    d["name"] = p.name;
    d["compute_capability"] = py::make_tuple(p.major, p.minor);
    d["multiprocessors"] = p.sm_count;
    d["clock_khz"] = p.clock_khz;
    d["memory_clock_khz"] = p.memory_clock_khz;
    d["memory_bus_width_bits"] = p.memory_bus_width;
    d["total_memory_bytes"] = p.total_memory;
    d["shared_memory_per_block_optin"] = p.smem_per_block_optin;
    d["shared_memory_per_multiprocessor"] = p.smem_per_sm;
    return d;
#else
    (void)device;
    throw std::runtime_error("built without CUDA");
#endif
}

uintptr_t cuda_alloc(std::size_t nbytes, int device) {
#if defined(LOOKTHROUGH_WITH_CUDA)
    require_device(device);
    return reinterpret_cast<uintptr_t>(lt::cuda::device_alloc(nbytes));
#else
    (void)nbytes, (void)device;
    throw std::runtime_error("built without CUDA");
#endif
}

void cuda_free(uintptr_t ptr) {
#if defined(LOOKTHROUGH_WITH_CUDA)
    lt::cuda::device_free(reinterpret_cast<void*>(ptr));
#else
    (void)ptr;
    throw std::runtime_error("built without CUDA");
#endif
}

void cuda_copy_to_device(uintptr_t dst, const py::buffer& src) {
    py::buffer_info info = src.request();
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    bool contiguous = true;
    py::ssize_t expect = info.itemsize;
    for (py::ssize_t i = info.ndim - 1; i >= 0; --i) {
        if (info.shape[i] > 1 && info.strides[i] != expect) contiguous = false;
        expect *= info.shape[i];
    }
    if (!contiguous) throw py::value_error("src must be C-contiguous");
    const std::size_t n = static_cast<std::size_t>(info.size * info.itemsize);
#if defined(LOOKTHROUGH_WITH_CUDA)
    if (!dst) throw py::value_error("dst must be a non-null device address");
    py::gil_scoped_release nogil;
    lt::cuda::copy_to_device(reinterpret_cast<void*>(dst), bytes, n);
#else
    (void)dst, (void)bytes, (void)n;
    throw std::runtime_error("built without CUDA");
#endif
}

py::dict build_info() {
    py::dict d;
#if defined(LOOKTHROUGH_WITH_CUDA)
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cuda_architectures"] = py::str(LOOKTHROUGH_CUDA_ARCHS);
    d["openmp"] = lt::topk_uses_openmp();
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() =
        "LookThrough C++ core: face alignment (similarity estimate + bilinear warp) and exact "
        "top-k cosine search. Use sdk._native for the documented Python API.";
    m.attr("__version__") = LOOKTHROUGH_VERSION;

    m.def("estimate_similarity", &estimate_similarity, py::arg("src"), py::arg("dst"),
          "estimate_similarity(src: (N,2), dst: (N,2)) -> (2,3) float64\n\n"
          "Least-squares similarity (rotation, uniform scale, translation; no reflection) that "
          "maps src points onto dst points (Umeyama 1991). N >= 2. Any real dtype.");
    m.def("warp_affine", &warp_affine, py::arg("image"), py::arg("M"), py::arg("out_h"),
          py::arg("out_w"),
          "warp_affine(image: uint8 HxW or HxWxC (C in 1,3,4), M: (2,3) source->destination, "
          "out_h, out_w) -> uint8 out_h x out_w [x C]\n\n"
          "Bilinear, constant-0 border; matches cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT) "
          "within 1 grey level. Channel order is untouched.");
    m.def("warp_affine_cuda", &warp_affine_cuda, py::arg("image"), py::arg("M"), py::arg("out_h"),
          py::arg("out_w"),
          "Same as warp_affine, computed on the current CUDA device. Raises RuntimeError "
          "('built without CUDA' / 'no CUDA device: ...') when unavailable.");
    m.def("topk_cosine", &topk_cosine, py::arg("gallery"), py::arg("queries"), py::arg("k"),
          "topk_cosine(gallery: float32 (N,D), queries: float32 (Q,D), k >= 1) -> "
          "(indices int64 (Q,k'), scores float32 (Q,k')), k' = min(k, N)\n\n"
          "Rows are assumed L2-normalised (score = dot product). Sorted by score descending, "
          "ties by lower index.");
    m.def("contextual_attention", &contextual_attention, py::arg("f"), py::arg("b"),
          py::arg("mask") = py::none(), py::arg("ksize") = 3, py::arg("stride") = 1,
          py::arg("rate") = 2, py::arg("fuse_k") = 3, py::arg("softmax_scale") = 10.0,
          py::arg("fuse") = true,
          "contextual_attention(f: float32 (B,C,Hf,Wf), b: float32 (B,C,Hb,Wb), mask: float32 "
          "(B or 1,1,Hb,Wb) | None, ksize=3, stride=1, rate=2, fuse_k=3, softmax_scale=10.0, "
          "fuse=True) -> (y float32 (B,C,Hf,Wf), attention float32 (B,L,Hf/rate,Wf/rate))\n\n"
          "Fused CPU contextual attention (DeepFill v1), spec kernels/contextual_attention/"
          "README.md; mask nonzero = hole.");
    m.def("contextual_attention_cuda_sizes", &contextual_attention_cuda_sizes, py::arg("B"),
          py::arg("C"), py::arg("Hf"), py::arg("Wf"), py::arg("Hb"), py::arg("Wb"),
          py::arg("mask_batch"), py::arg("dtype"), py::arg("ksize") = 3, py::arg("stride") = 1,
          py::arg("rate") = 2, py::arg("fuse_k") = 3, py::arg("fuse") = true,
          "contextual_attention_cuda_sizes(B, C, Hf, Wf, Hb, Wb, mask_batch, dtype, ...) -> "
          "{'workspace_bytes', 'patches' (L), 'grid' (gh, gw), 'fg_grid' (hf, wf)}\n\n"
          "Validates sizes / parameters for the CUDA kernel (ValueError naming the problem). "
          "Needs no GPU.");
    m.def("contextual_attention_cuda", &contextual_attention_cuda, py::arg("f"), py::arg("b"),
          py::arg("mask"), py::arg("y"), py::arg("attention"), py::arg("workspace"),
          py::arg("workspace_bytes"), py::arg("B"), py::arg("C"), py::arg("Hf"), py::arg("Wf"),
          py::arg("Hb"), py::arg("Wb"), py::arg("mask_batch"), py::arg("dtype"),
          py::arg("ksize") = 3, py::arg("stride") = 1, py::arg("rate") = 2, py::arg("fuse_k") = 3,
          py::arg("softmax_scale") = 10.0, py::arg("fuse") = true, py::arg("stream") = 0,
          py::arg("device") = 0,
          "contextual_attention_cuda(f, b, mask, y, attention, workspace: int device addresses "
          "(mask / attention 0 = none), workspace_bytes, B, C, Hf, Wf, Hb, Wb, mask_batch (0, 1 "
          "or B), dtype ('float32' | 'float16'), ksize, stride, rate, fuse_k, softmax_scale, fuse, "
          "stream: int cudaStream_t, device: int) -> None\n\n"
          "Enqueues the fused CUDA contextual attention on `stream` (asynchronous). Arrays are "
          "C-contiguous NCHW device memory; use sdk._cuda_ops.contextual_attention for torch "
          "tensors. ValueError for bad sizes, RuntimeError without CUDA / device.");
    m.def("contextual_attention_cuda_plan", &contextual_attention_cuda_plan, py::arg("B"),
          py::arg("C"), py::arg("Hf"), py::arg("Wf"), py::arg("Hb"), py::arg("Wb"),
          py::arg("mask_batch"), py::arg("ksize") = 3, py::arg("stride") = 1,
          py::arg("rate") = 2, py::arg("fuse_k") = 3, py::arg("fuse") = true,
          py::arg("device") = 0,
          "The kernel's tile plan on `device` as a JSON string (benchmarks).");
    m.def("cuda_device_properties", &cuda_device_properties, py::arg("device") = 0,
          "cuda_device_properties(device=0) -> {'name', 'compute_capability', 'multiprocessors', "
          "'clock_khz', 'memory_clock_khz', 'memory_bus_width_bits', 'total_memory_bytes', "
          "'shared_memory_per_block_optin', 'shared_memory_per_multiprocessor'}");
    m.def("cuda_alloc", &cuda_alloc, py::arg("nbytes"), py::arg("device") = 0,
          "cuda_alloc(nbytes, device=0) -> int device address (cudaMalloc; free with cuda_free)");
    m.def("cuda_free", &cuda_free, py::arg("ptr"), "cuda_free(ptr) (cudaFree)");
    m.def("cuda_copy_to_device", &cuda_copy_to_device, py::arg("dst"), py::arg("src"),
          "cuda_copy_to_device(dst: int device address, src: C-contiguous buffer) "
          "(synchronous cudaMemcpy)");
    m.def("cuda_info", &cuda_info,
          "cuda_info() -> {'compiled': bool, 'device_count': int, 'error': str | None}");
    m.def("build_info", &build_info,
          "build_info() -> {'cuda': bool, 'cuda_architectures': str, 'openmp': bool}");
}
