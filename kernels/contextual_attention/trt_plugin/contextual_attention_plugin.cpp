// TensorRT IPluginV3 around the CUDA contextual attention (see contextual_attention_plugin.h).
// No exception leaves a TensorRT callback: failures are logged through TensorRT's logger (when the
// library was loaded by a registry that provides one) and reported as a non-zero status / nullptr.
#include "contextual_attention/trt_plugin/contextual_attention_plugin.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "contextual_attention/cuda/ca_cuda.h"
#include "contextual_attention/cuda/plan.h"

using namespace nvinfer1;

namespace lt {
namespace trt {
namespace {

std::mutex gLoggerMutex;
ILoggerFinder* gLoggerFinder = nullptr;

void log(ILogger::Severity severity, const std::string& msg) noexcept {
    try {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        ILogger* logger = gLoggerFinder ? gLoggerFinder->findLogger() : nullptr;
        const std::string line = std::string("[lookthrough::ContextualAttention] ") + msg;
        if (logger) logger->log(severity, line.c_str());
    } catch (...) {
    }
}

void error(const std::string& msg) noexcept { log(ILogger::Severity::kERROR, msg); }

bool is_float_type(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }

// (N, C, H, W) of a 4-D descriptor, -1 for unknown extents.
struct Shape4 {
    int64_t n, c, h, w;
};

Shape4 shape4(const Dims& d) {
    if (d.nbDims != 4)
        throw std::invalid_argument("inputs must be 4-D (N, C, H, W), got " +
                                    std::to_string(d.nbDims) + " dimensions");
    return {d.d[0], d.d[1], d.d[2], d.d[3]};
}

// The kernel's shape for concrete input dims; throws std::invalid_argument when they do not fit.
cuda::CaShape kernel_shape(const Dims& f, const Dims& b, const Dims* mask) {
    const Shape4 sf = shape4(f), sb = shape4(b);
    if (sf.n != sb.n || sf.c != sb.c)
        throw std::invalid_argument("f and b must have equal batch and channels");
    cuda::CaShape s;
    s.B = sf.n, s.C = sf.c, s.Hf = sf.h, s.Wf = sf.w, s.Hb = sb.h, s.Wb = sb.w;
    if (mask) {
        const Shape4 sm = shape4(*mask);
        if (sm.c != 1 || sm.h != sb.h || sm.w != sb.w || (sm.n != 1 && sm.n != sb.n))
            throw std::invalid_argument("mask must be (N or 1, 1, Hb, Wb)");
        s.mask_batch = sm.n;
    }
    return s;
}

bool all_known(const Dims& d) {
    for (int i = 0; i < d.nbDims; ++i)
        if (d.d[i] < 0) return false;
    return true;
}

int64_t int_field(const PluginField& f) {
    if (f.length != 1 || f.data == nullptr)
        throw std::invalid_argument(std::string("field ") + f.name + " must hold one value");
    switch (f.type) {
        case PluginFieldType::kINT32: return *static_cast<const int32_t*>(f.data);
        case PluginFieldType::kINT64: return *static_cast<const int64_t*>(f.data);
        case PluginFieldType::kINT16: return *static_cast<const int16_t*>(f.data);
        case PluginFieldType::kINT8: return *static_cast<const int8_t*>(f.data);
        default: throw std::invalid_argument(std::string("field ") + f.name + " must be an integer");
    }
}

double float_field(const PluginField& f) {
    if (f.length != 1 || f.data == nullptr)
        throw std::invalid_argument(std::string("field ") + f.name + " must hold one value");
    switch (f.type) {
        case PluginFieldType::kFLOAT32: return *static_cast<const float*>(f.data);
        case PluginFieldType::kFLOAT64: return *static_cast<const double*>(f.data);
        case PluginFieldType::kINT32:
        case PluginFieldType::kINT64: return static_cast<double>(int_field(f));
        default: throw std::invalid_argument(std::string("field ") + f.name + " must be a float");
    }
}

}  // namespace

ContextualAttentionParams parse_fields(const PluginFieldCollection* fc, int32_t* nb_inputs) {
    ContextualAttentionParams p;  // DeepFill defaults: 3, 1, 2, 3, 10, true
    if (nb_inputs) *nb_inputs = 0;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        const PluginField& f = fc->fields[i];
        if (f.name == nullptr) continue;
        const std::string name = f.name;
        if (name == "ksize") p.ksize = static_cast<int>(int_field(f));
        else if (name == "stride") p.stride = static_cast<int>(int_field(f));
        else if (name == "rate") p.rate = static_cast<int>(int_field(f));
        else if (name == "fuse_k") p.fuse_k = static_cast<int>(int_field(f));
        else if (name == "fuse") p.fuse = int_field(f) != 0;
        else if (name == "softmax_scale") p.softmax_scale = float_field(f);
        else if (name == "num_inputs" && nb_inputs) *nb_inputs = static_cast<int32_t>(int_field(f));
        // other fields (plugin_version, plugin_namespace from the ONNX parser) are ignored
    }
    if (p.ksize < 1 || p.stride < 1 || p.rate < 1 || p.fuse_k < 1 || p.fuse_k % 2 != 1 ||
        !std::isfinite(p.softmax_scale))
        throw std::invalid_argument("invalid attributes: ksize, stride, rate >= 1, fuse_k odd, "
                                    "softmax_scale finite");
    return p;
}

// ---------------------------------------------------------------------------------------- plugin
ContextualAttentionPlugin::ContextualAttentionPlugin(const ContextualAttentionParams& prm,
                                                     int32_t nbInputs)
    : mParams(prm), mNbInputs(nbInputs) {
    initFields();
}

ContextualAttentionPlugin::ContextualAttentionPlugin(const ContextualAttentionPlugin& other)
    : IPluginV3(), IPluginV3OneCore(), IPluginV3OneBuild(), IPluginV3OneRuntime(),
      mParams(other.mParams), mNbInputs(other.mNbInputs) {
    initFields();
}

void ContextualAttentionPlugin::setNbInputs(int32_t n) {
    mNbInputs = n;
    mIntFields[5] = n;
}

void ContextualAttentionPlugin::initFields() {
    mIntFields[0] = mParams.ksize, mIntFields[1] = mParams.stride, mIntFields[2] = mParams.rate;
    mIntFields[3] = mParams.fuse_k, mIntFields[4] = mParams.fuse ? 1 : 0;
    mIntFields[5] = mNbInputs;
    mScale = static_cast<float>(mParams.softmax_scale);
    static const char* const kNames[6] = {"ksize", "stride", "rate", "fuse_k", "fuse", "num_inputs"};
    mFields.clear();
    for (int i = 0; i < 6; ++i)
        mFields.emplace_back(kNames[i], &mIntFields[i], PluginFieldType::kINT32, 1);
    mFields.emplace_back("softmax_scale", &mScale, PluginFieldType::kFLOAT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    std::ostringstream key;
    key << "ksize=" << mParams.ksize << ",stride=" << mParams.stride << ",rate=" << mParams.rate
        << ",fuse_k=" << mParams.fuse_k << ",fuse=" << (mParams.fuse ? 1 : 0)
        << ",softmax_scale=" << mScale;
    mAttributeKey = key.str();
}

IPluginCapability* ContextualAttentionPlugin::getCapabilityInterface(
    PluginCapabilityType type) noexcept {
    switch (type) {
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* ContextualAttentionPlugin::clone() noexcept {
    try {
        return new ContextualAttentionPlugin(*this);
    } catch (const std::exception& e) {
        error(std::string("clone: ") + e.what());
        return nullptr;
    }
}

int32_t ContextualAttentionPlugin::configurePlugin(DynamicPluginTensorDesc const* in,
                                                   int32_t nbInputs,
                                                   DynamicPluginTensorDesc const* out,
                                                   int32_t nbOutputs) noexcept {
    try {
        if (nbInputs != 2 && nbInputs != 3)
            throw std::invalid_argument("takes 2 or 3 inputs (f, b[, mask]), got " +
                                        std::to_string(nbInputs));
        if (nbOutputs != 1) throw std::invalid_argument("has exactly one output");
        (void)out;
        // validate the largest shapes of the profile
        const Dims* mask = nbInputs == 3 ? &in[2].max : nullptr;
        const cuda::CaShape s = kernel_shape(in[0].max, in[1].max, mask);
        ca::make_geometry(s.B, s.C, s.Hf, s.Wf, s.Hb, s.Wb, s.mask_batch, mParams);
        setNbInputs(nbInputs);
        return 0;
    } catch (const std::exception& e) {
        error(std::string("configurePlugin: ") + e.what());
        return 1;
    }
}

int32_t ContextualAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                      DataType const* inputTypes,
                                                      int32_t nbInputs) const noexcept {
    if (nbOutputs != 1 || nbInputs < 2 || !is_float_type(inputTypes[0])) {
        error("getOutputDataTypes: one output, float32 / float16 inputs");
        return 1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t ContextualAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                                   DimsExprs const* shapeInputs,
                                                   int32_t nbShapeInputs, DimsExprs* outputs,
                                                   int32_t nbOutputs,
                                                   IExprBuilder& exprBuilder) noexcept {
    (void)shapeInputs, (void)nbShapeInputs, (void)exprBuilder;
    if (nbInputs < 2 || nbOutputs != 1 || inputs[0].nbDims != 4) {
        error("getOutputShapes: f must be 4-D (N, C, H, W)");
        return 1;
    }
    outputs[0] = inputs[0];  // y has f's shape
    return 0;
}

bool ContextualAttentionPlugin::supportsFormatCombination(int32_t pos,
                                                          DynamicPluginTensorDesc const* inOut,
                                                          int32_t nbInputs,
                                                          int32_t nbOutputs) noexcept {
    if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
    const PluginTensorDesc& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return is_float_type(d.type);
    return d.type == inOut[0].desc.type;  // every input and the output share f's type
}

size_t ContextualAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs,
                                                   int32_t nbInputs,
                                                   DynamicPluginTensorDesc const* outputs,
                                                   int32_t nbOutputs) const noexcept {
    (void)outputs, (void)nbOutputs;
    try {
        const Dims* mask = nbInputs == 3 ? &inputs[2].max : nullptr;
        const cuda::CaShape s = kernel_shape(inputs[0].max, inputs[1].max, mask);
        const cuda::DType dt = inputs[0].desc.type == DataType::kHALF ? cuda::DType::kFloat16
                                                                      : cuda::DType::kFloat32;
        return cuda::contextual_attention_workspace_bytes(s, mParams, dt);
    } catch (const std::exception& e) {
        error(std::string("getWorkspaceSize: ") + e.what());
        return 0;
    }
}

int32_t ContextualAttentionPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs,
                                                 PluginTensorDesc const* out,
                                                 int32_t nbOutputs) noexcept {
    (void)out, (void)nbOutputs;
    try {
        if (nbInputs != 2 && nbInputs != 3) throw std::invalid_argument("2 or 3 inputs");
        if (all_known(in[0].dims) && all_known(in[1].dims)) {
            const cuda::CaShape s = kernel_shape(in[0].dims, in[1].dims,
                                                 nbInputs == 3 ? &in[2].dims : nullptr);
            ca::make_geometry(s.B, s.C, s.Hf, s.Wf, s.Hb, s.Wb, s.mask_batch, mParams);
        }
        setNbInputs(nbInputs);
        return 0;
    } catch (const std::exception& e) {
        error(std::string("onShapeChange: ") + e.what());
        return 1;
    }
}

int32_t ContextualAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc,
                                           PluginTensorDesc const* outputDesc,
                                           void const* const* inputs, void* const* outputs,
                                           void* workspace, cudaStream_t stream) noexcept {
    (void)outputDesc;
    try {
        if (mNbInputs != 2 && mNbInputs != 3)
            throw std::runtime_error("the number of inputs is unknown (neither configurePlugin nor "
                                     "onShapeChange ran)");
        const bool has_mask = mNbInputs == 3;
        const cuda::CaShape s = kernel_shape(inputDesc[0].dims, inputDesc[1].dims,
                                             has_mask ? &inputDesc[2].dims : nullptr);
        const cuda::DType dt =
            inputDesc[0].type == DataType::kHALF ? cuda::DType::kFloat16 : cuda::DType::kFloat32;
        const std::size_t need = cuda::contextual_attention_workspace_bytes(s, mParams, dt);
        cuda::contextual_attention_forward(inputs[0], inputs[1], has_mask ? inputs[2] : nullptr,
                                           outputs[0], nullptr, workspace, need, s, mParams, dt,
                                           stream);
        return 0;
    } catch (const std::exception& e) {
        error(std::string("enqueue: ") + e.what());
        return 1;
    }
}

IPluginV3* ContextualAttentionPlugin::attachToContext(IPluginResourceContext* context) noexcept {
    (void)context;
    return clone();
}

PluginFieldCollection const* ContextualAttentionPlugin::getFieldsToSerialize() noexcept {
    return &mFieldCollection;
}

// ---------------------------------------------------------------------------------------- creator
ContextualAttentionPluginCreator::ContextualAttentionPluginCreator() {
    mFieldNames.emplace_back("ksize", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("stride", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("rate", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("fuse_k", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("fuse", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("softmax_scale", nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

PluginFieldCollection const* ContextualAttentionPluginCreator::getFieldNames() noexcept {
    return &mFieldCollection;
}

IPluginV3* ContextualAttentionPluginCreator::createPlugin(char const* name,
                                                          PluginFieldCollection const* fc,
                                                          TensorRTPhase phase) noexcept {
    (void)name, (void)phase;
    try {
        int32_t nb_inputs = 0;
        const ContextualAttentionParams prm = parse_fields(fc, &nb_inputs);
        return new ContextualAttentionPlugin(prm, nb_inputs);
    } catch (const std::exception& e) {
        error(std::string("createPlugin: ") + e.what());
        return nullptr;
    }
}

}  // namespace trt
}  // namespace lt

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static lt::trt::ContextualAttentionPluginCreator creator;
    static IPluginCreatorInterface* const kCreators[] = {&creator};
    nbCreators = 1;
    return kCreators;
}

extern "C" void setLoggerFinder(ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lock(lt::trt::gLoggerMutex);
    if (lt::trt::gLoggerFinder == nullptr) lt::trt::gLoggerFinder = finder;
}
