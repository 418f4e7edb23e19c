"""Rockchip RKNN: the backend, its side environment and the worker that runs the toolkit there."""

from yoloq.backends.rknn.backend import RknnBackend

__all__ = ["RknnBackend"]
