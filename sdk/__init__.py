"""LookThrough SDK: recognise people whose faces are covered.

    >>> import sdk
    >>> rec = sdk.Recognizer()              # built-in default bundle; ONNX Runtime on the CPU (backend="auto")
    >>> rec.enroll("alice", "alice.jpg")
    >>> rec.identify(frame)                 # frame: BGR uint8 (H, W, 3), as cv2.imread gives

The runtime never imports torch, except to run a bundle's torch weights (``backend="torch"``, :mod:`sdk.backends`).
"""
from __future__ import annotations

__version__ = "0.1.0"

from sdk.errors import (BackendUnavailableError, BundleError, GalleryError, LookThroughError,  # noqa: E402
                        ModelFileError, NoFaceError)
from sdk.types import Face, Match  # noqa: E402


def __getattr__(name: str):  # lazy: importing sdk must stay cheap and not need the C++ core
    if name in ("Recognizer", "RecognizerConfig", "Verification"):
        from sdk import recognizer

        return getattr(recognizer, name)
    if name == "Gallery":
        from sdk.gallery import Gallery

        return Gallery
    if name in ("Stream", "StreamConfig"):
        from sdk import stream

        return getattr(stream, name)
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")


__all__ = ["Recognizer", "RecognizerConfig", "Verification", "Gallery", "Stream", "StreamConfig", "Face", "Match",
           "LookThroughError", "ModelFileError", "BundleError", "GalleryError", "NoFaceError", "BackendUnavailableError",
           "__version__"]
