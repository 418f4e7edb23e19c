"""Backends: one module per format, found through :mod:`yoloq.backends.registry`."""

from yoloq.backends.base import Artifact, Backend, ExportContext, OptionSpec, Runtime
from yoloq.backends.registry import available_formats, get_backend

__all__ = ["Artifact", "Backend", "ExportContext", "OptionSpec", "Runtime", "available_formats", "get_backend"]
