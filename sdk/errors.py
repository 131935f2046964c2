"""Exceptions raised by the SDK. All derive from :class:`LookThroughError` so callers can catch one type."""
from __future__ import annotations


class LookThroughError(Exception):
    """Base class of every error the SDK raises on purpose."""


class ModelFileError(LookThroughError, ValueError):
    """A model file is missing, truncated, corrupt or of the wrong kind. The message names the file."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"model file {self.path!s}: {problem}")


class BundleError(LookThroughError, ValueError):
    """A model-bundle manifest is missing, malformed or of an unsupported version."""


class GalleryError(LookThroughError, ValueError):
    """A gallery file cannot be used (foreign embedding model, corrupt file, bad enrollment input)."""


class NoFaceError(LookThroughError, ValueError):
    """An image that had to show a face (to enroll, verify or embed) has none the detector accepts.

    The message names the image.
    """


class BackendUnavailableError(LookThroughError, RuntimeError):
    """An inference engine or device a model was asked to run on is not usable here (not installed, no CUDA
    device, an engine file without its manifest). The message is one line: what is missing and how to run the
    same bundle on an engine that is (ONNX Runtime on the CPU always is)."""
