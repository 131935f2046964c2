"""export/triton.py: a Triton model repository from a bundle; the generated config.pbtxt text is parsed back."""
from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from export import triton
from sdk.bundle import load_bundle


def test_repository_for_a_bundle_with_segmenter_and_embedder(tmp_path):
    pipe = triton.write_repository("student-v1", tmp_path, max_batch=16, preferred=(4, 8, 32), instances=2)
    assert [m["stage"] for m in pipe["models"]] == ["segment", "embed"]
    seg = triton.parse_pbtxt((tmp_path / "student_v1_segment" / "config.pbtxt").read_text())
    assert seg["name"] == "student_v1_segment" and seg["platform"] == "onnxruntime_onnx"
    assert seg["max_batch_size"] == 16
    assert seg["input"] == [{"name": "crops", "data_type": "TYPE_UINT8", "dims": [112, 112, 3]}]
    outs = {o["name"]: o for o in seg["output"]}
    assert outs["mask_prob"]["dims"] == [1, 112, 112] and outs["mask_prob"]["data_type"] == "TYPE_FP32"
    assert outs["occluded_prob"]["dims"] == [1] and outs["occluded_prob"]["reshape"] == {"shape": []}
    assert seg["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 2000}
    assert seg["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]
    emb = triton.parse_pbtxt((tmp_path / "student_v1_embed" / "config.pbtxt").read_text())
    assert emb["input"][0]["dims"] == [150, 150, 3] and emb["output"][0]["dims"] == [128]
    # the model files are the bundle's graphs, and the pbtxt matches them
    model = onnx.load(str(tmp_path / "student_v1_embed" / "1" / "model.onnx"))
    assert model.graph.input[0].name == emb["input"][0]["name"]
    saved = json.loads((tmp_path / "lookthrough_pipeline.json").read_text())
    assert saved["models"][1]["model"] == "student_v1_embed" and "Client flow" in (tmp_path / "README.md").read_text()
    assert saved["export"]["format"] == "triton" and len(saved["export"]["source"]["sha256"]) == 64  # its metadata


def test_inpainter_cpu_instances_and_tensorrt_accelerator(tmp_path):
    triton.write_repository("deocclusion-preview", tmp_path, prefix="dp", kind="cpu", tensorrt=True)
    cfg = triton.parse_pbtxt((tmp_path / "dp_complete" / "config.pbtxt").read_text())
    assert [i["name"] for i in cfg["input"]] == ["image", "mask"]
    assert cfg["input"][1] == {"name": "mask", "data_type": "TYPE_FP32", "dims": [1, 112, 112]}
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    acc = cfg["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]
    assert acc["name"] == "tensorrt"


def test_static_batch_graph_gets_max_batch_size_zero(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    cfg = triton.parse_pbtxt(triton.config_pbtxt("relu", m.SerializeToString()))
    assert cfg["max_batch_size"] == 0 and cfg["input"][0]["dims"] == [1, 4] and "dynamic_batching" not in cfg


def test_parse_pbtxt_rejects_broken_text():
    with pytest.raises(ValueError):
        triton.parse_pbtxt('name: "x"\ninput [ { name: "a"')


def test_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export", "triton", "--bundle", "default", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    prefix = load_bundle("default").name.replace("-", "_")  # Triton model names: the bundle's name, "_" for "-"
    assert (tmp_path / "r" / f"{prefix}_segment" / "config.pbtxt").is_file()
    assert (tmp_path / "r" / f"{prefix}_embed" / "config.pbtxt").is_file()
    bad = subprocess.run([sys.executable, "-m", "export", "triton", "--bundle", "baseline", "--out",
                          str(tmp_path / "b")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no ONNX stage" in bad.stderr
