"""The TensorRT plugin library (kernels/contextual_attention/trt_plugin/) through TensorRT's public interfaces.

Needs TensorRT's headers (``TENSORRT_INCLUDE_DIR``, e.g. /usr/include/x86_64-linux-gnu on a TensorRT install or the
``include/`` folder of github.com/NVIDIA/TensorRT), nvcc and CMake; skipped cleanly otherwise. ``LOOKTHROUGH_TRT_PLUGIN``
may point at an already built ``liblookthrough_trt_plugin.so`` (then no CMake build). The self-test
(tests/trt_plugin/plugin_selftest.cpp) loads the library like TensorRT's plugin registry does and drives the creator
and the plugin's build / runtime callbacks; on a machine with a CUDA device it also runs enqueue.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADERS = os.environ.get("TENSORRT_INCLUDE_DIR", "")

pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not HEADERS or not (Path(HEADERS) / "NvInferRuntime.h").is_file(),
                       reason="TensorRT headers not given (set TENSORRT_INCLUDE_DIR)"),
]


def _cuda_include() -> str | None:
    """The CUDA toolkit's include folder: $CUDA_HOME / $CUDA_PATH, nvcc's own folder, /usr/local/cuda."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
        r = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull], capture_output=True, text=True)
        roots += [ln.split("=", 1)[1].strip().strip('"') for ln in r.stderr.splitlines()
                  if ln.startswith("#$ TOP=")]
    roots.append("/usr/local/cuda")
    for root in filter(None, roots):
        inc = Path(root) / "include"
        if (inc / "cuda_runtime_api.h").is_file():
            return str(inc)
    return None


@pytest.fixture(scope="module")
def plugin_lib(tmp_path_factory) -> Path:
    given = os.environ.get("LOOKTHROUGH_TRT_PLUGIN")
    if given:
        return Path(given)
    if not shutil.which("cmake") or not shutil.which("nvcc"):
        pytest.skip("building the plugin needs cmake and nvcc")
    import pybind11

    out = tmp_path_factory.mktemp("trt_plugin_build")
    arch = os.environ.get("CUDAARCHS", "80")
    cfg = ["cmake", "-S", str(ROOT), "-B", str(out), f"-DTENSORRT_INCLUDE_DIR={HEADERS}",
           f"-DCMAKE_CUDA_ARCHITECTURES={arch}", f"-DPython_EXECUTABLE={sys.executable}",
           f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"]
    if shutil.which("ninja"):
        cfg += ["-G", "Ninja"]
    subprocess.run(cfg, check=True, capture_output=True, text=True)
    r = subprocess.run(["cmake", "--build", str(out), "--target", "lookthrough_trt_plugin"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out / "liblookthrough_trt_plugin.so"


def test_plugin_selftest(plugin_lib, tmp_path):
    cuda_inc = _cuda_include()
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if not cuda_inc or not cxx:
        pytest.skip("needs the CUDA headers (nvcc's include folder) and a C++ compiler")
    exe = tmp_path / "plugin_selftest"
    subprocess.run([cxx, "-std=c++17", "-O1", "-isystem", HEADERS, "-isystem", cuda_inc,
                    str(ROOT / "tests" / "trt_plugin" / "plugin_selftest.cpp"), "-o", str(exe), "-ldl"],
                   check=True, capture_output=True, text=True)
    from sdk import _native

    args = [str(exe), str(plugin_lib)]
    if _native.cuda_info()["device_count"] > 0:
        args.append("--gpu")
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ALL OK" in r.stdout, r.stdout + r.stderr
