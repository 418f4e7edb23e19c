"""NCNN: the backend (pnnx exports, ncnn's runtime) and ncnn's INT8 tools built from its source."""

from yoloq.backends.ncnn.backend import NcnnBackend

__all__ = ["NcnnBackend"]
