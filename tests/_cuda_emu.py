"""Build and run the CPU emulation of the CUDA contextual attention (tests/cuda_emu/): the exact kernel
source of ``kernels/contextual_attention/cuda/`` compiled with g++ against ``cuda_emu.h`` and run as a
subprocess (a crash in the emulated kernel fails one test instead of the whole session)."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests" / "cuda_emu" / "emu_driver.cpp",
           ROOT / "kernels" / "contextual_attention" / "cuda" / "plan.cpp"]
HEADERS = sorted((ROOT / "kernels" / "contextual_attention").rglob("*.h")) + sorted(
    (ROOT / "kernels" / "contextual_attention").rglob("*.cuh")) + [ROOT / "tests" / "cuda_emu" / "cuda_emu.h"]

ORDERS = {"forward": 0, "reverse": 1, "shuffle": 2}


def compiler() -> str | None:
    """The C++ compiler to use (``$CXX``, else g++ / c++ on PATH) or None."""
    for c in (os.environ.get("CXX"), "g++", "c++"):
        if c and shutil.which(c):
            return c
    return None


def build(out_dir: Path, sanitize: bool = False) -> Path:
    """Compile the driver into ``out_dir`` (C++20, -O2); ``sanitize`` adds UBSan (integer overflow in index
    arithmetic, misaligned access ...; about 10x slower to run). Returns the executable's path."""
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler")
    exe = out_dir / ("emu_driver_ubsan" if sanitize else "emu_driver")
    flags = ["-fsanitize=undefined", "-fno-sanitize-recover=undefined"] if sanitize else []
    cmd = [cxx, "-std=c++20", "-O2", "-Wall", "-Wno-unknown-pragmas", *flags, f"-I{ROOT / 'kernels'}",
           f"-I{ROOT / 'tests' / 'cuda_emu'}", *map(str, SOURCES), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the CUDA emulation failed:\n{r.stderr[-4000:]}")
    return exe


@dataclass
class EmuResult:
    y: np.ndarray
    attention: np.ndarray | None
    plan: str
    blocks: int
    switches: int


class EmuError(RuntimeError):
    """The emulated launch failed (bad arguments, a launch fault or an out-of-bounds write)."""


@dataclass
class Device:
    """The emulated GPU: shared memory limits decide the tile plan; sm_count how many tiles it aims for."""
    smem_per_block_optin: int = 99 * 1024
    smem_per_sm: int = 100 * 1024
    sm_count: int = 1
    order: str = "forward"
    seed: int = 1


def run(exe: Path, f: np.ndarray, b: np.ndarray, mask: np.ndarray | None, *, ksize=3, stride=1, rate=2,
        fuse_k=3, softmax_scale=10.0, fuse=True, attention=True, device: Device | None = None,
        tmp: Path, timeout: float = 600.0) -> EmuResult:
    """Run the emulated CUDA forward on float32 or float16 arrays (NCHW, C-contiguous)."""
    device = device or Device()
    if f.dtype not in (np.float32, np.float16) or b.dtype != f.dtype:
        raise TypeError("f and b must both be float32 or both float16")
    B, C, Hf, Wf = f.shape
    Hb, Wb = b.shape[2:]
    mb = 0 if mask is None else mask.shape[0]
    hdr = [B, C, Hf, Wf, Hb, Wb, mb, int(f.dtype == np.float16), ksize, stride, rate, fuse_k, int(fuse),
           int(attention), device.smem_per_block_optin, device.smem_per_sm, device.sm_count,
           ORDERS[device.order], device.seed, 0]
    src, dst = tmp / "in.bin", tmp / "out.bin"
    with open(src, "wb") as fh:
        fh.write(b"LTCA" + struct.pack("<20q", *hdr) + struct.pack("<d", softmax_scale))
        fh.write(np.ascontiguousarray(f).tobytes())
        fh.write(np.ascontiguousarray(b).tobytes())
        if mask is not None:
            fh.write(np.ascontiguousarray(mask, dtype=f.dtype).tobytes())
    proc = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True, timeout=timeout)
    if not dst.exists():
        raise EmuError(f"emulator crashed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    raw = dst.read_bytes()
    status, n = struct.unpack_from("<qq", raw, 0)
    msg = raw[16:16 + n].decode()
    blocks, switches = struct.unpack_from("<qq", raw, 16 + n)
    if status != 0:
        raise EmuError(msg)
    off = 32 + n
    y = np.frombuffer(raw, f.dtype, count=f.size, offset=off).reshape(f.shape)
    att = None
    if attention:
        off += y.nbytes
        hf, wf = Hf // rate, Wf // rate
        att = np.frombuffer(raw, f.dtype, offset=off).reshape(B, -1, hf, wf)
    return EmuResult(y=y, attention=att, plan=msg, blocks=blocks, switches=switches)
