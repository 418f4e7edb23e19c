"""NCNN: the backend (pnnx exports, ncnn's runtime), yoloq's INT8 writer in ncnn's formats and recovery on ncnn's grid."""

from yoloq.backends.ncnn.backend import NcnnBackend

__all__ = ["NcnnBackend"]
