"""Exact rewrites of a YOLO model before export: the same arithmetic in the forms a runtime's fast kernels take.

A delegate such as XNNPACK takes a softmax over the last axis only, no nearest upsample and no ``split``; each op it
refuses runs in the runtime's portable kernels between delegate calls, in float. The rewrites here change the form,
not the function: the DFL's softmax over the last axis, the 2x nearest upsample as concatenations and reshapes, the
``chunk`` of a block's first convolution as two convolutions; for INT8 programs, SiLU as ``x * sigmoid(x)``. Each
keeps the model's module names, so scopes set by module name (the stem or head kept in float) still apply, and each
says what it changed (:func:`apply`).
"""

from yoloq.rewrite.modules import INT8_REWRITES, REWRITES, apply

__all__ = ["INT8_REWRITES", "REWRITES", "apply"]
