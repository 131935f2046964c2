// TensorRT plugin "ContextualAttention" (version "1", namespace "lookthrough"): the CUDA contextual
// attention (kernels/contextual_attention/cuda/) as an IPluginV3 layer, so engines built from the
// inpainter's TensorRT ONNX export (node lookthrough::ContextualAttention, export/trt_onnx.py) run
// the fused kernel. Written against TensorRT's public headers only (IPluginV3 + IPluginV3OneCore /
// Build / Runtime and IPluginCreatorV3One); it needs no TensorRT library at link time.
//
// Inputs  f (N, C, Hf, Wf), b (N, C, Hb, Wb) [, mask (N or 1, 1, Hb, Wb), nonzero = hole],
//         all float32 or all float16, linear (NCHW) layout; the batch may be dynamic.
// Output  y (N, C, Hf, Wf), the input type.
// Fields  ksize, stride, rate, fuse_k, fuse (int32) and softmax_scale (float32), serialized into
//         the engine with num_inputs (2 or 3, known after configurePlugin). int64 / float64
//         fields (as some ONNX parsers pass attributes) are accepted; unknown fields are ignored.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "contextual_attention/contextual_attention.h"

namespace lt {
namespace trt {

constexpr char const* kPluginName = "ContextualAttention";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "lookthrough";

class ContextualAttentionPlugin : public nvinfer1::IPluginV3,
                                  public nvinfer1::IPluginV3OneCore,
                                  public nvinfer1::IPluginV3OneBuild,
                                  public nvinfer1::IPluginV3OneRuntime {
public:
    //! nbInputs: 2 or 3 when known (deserialised engines), 0 until configurePlugin / onShapeChange.
    explicit ContextualAttentionPlugin(const ContextualAttentionParams& prm, int32_t nbInputs = 0);
    ContextualAttentionPlugin(const ContextualAttentionPlugin& other);
    ContextualAttentionPlugin& operator=(const ContextualAttentionPlugin&) = delete;
    ~ContextualAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(
        nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* out,
                            int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               nvinfer1::DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                            nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs,
                            nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                   int32_t nbInputs, int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override { return 1; }
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                            nvinfer1::DynamicPluginTensorDesc const* outputs,
                            int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override { return mAttributeKey.c_str(); }
    char const* getMetadataString() noexcept override { return mAttributeKey.c_str(); }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    const ContextualAttentionParams& params() const { return mParams; }

private:
    void initFields();
    void setNbInputs(int32_t n);

    ContextualAttentionParams mParams;
    int32_t mNbInputs{0};     // 2 (f, b) or 3 (f, b, mask); enqueue is not told
    int32_t mIntFields[6]{};  // ksize, stride, rate, fuse_k, fuse, num_inputs (serialized)
    float mScale{};           // softmax_scale (serialized)
    std::string mAttributeKey;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class ContextualAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One {
public:
    ContextualAttentionPluginCreator();
    ~ContextualAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Parses plugin fields into parameters (defaults for missing fields, DeepFill's values) and, when
//! given, the serialized num_inputs (0 when absent). Throws std::invalid_argument for a field of
//! the wrong type or an invalid value.
ContextualAttentionParams parse_fields(const nvinfer1::PluginFieldCollection* fc,
                                       int32_t* nb_inputs = nullptr);

}  // namespace trt
}  // namespace lt

//! Library entry points TensorRT looks up (IPluginRegistry::loadLibrary, trtexec --staticPlugins).
extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const*
getCreators(int32_t& nbCreators);
extern "C" __attribute__((visibility("default"))) void setLoggerFinder(
    nvinfer1::ILoggerFinder* finder);
