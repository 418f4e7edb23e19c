"""The rewrites, each on the modules of a fused Ultralytics model in place, each exact: the same products and sums or
the same copies, in another form (the DFL's 16 products are summed by a matrix product instead of a 1x1
convolution, which may round the last bit of a float differently; nothing else changes a value).

- ``dfl_last_axis``: the DFL's softmax over its bins taken on the last axis (a transpose before it), its expectation
  as a matrix product with the bins' values: XNNPACK takes softmax on the last axis only.
- ``nearest_as_concat``: a 2x nearest upsample as two concatenations of the input with itself and two reshapes,
  which a delegate runs as copies (XNNPACK has no nearest upsample, only bilinear).
- ``split_first_conv``: a block that splits its first convolution's output in halves (``C2f``/``C3k2``'s
  ``chunk``, ``C2PSA``'s ``split``) gets two convolutions, one per half, in place of the convolution and the split
  (XNNPACK takes no ``split``; each half's channels are computed by the same weights as before).

One more, for INT8 programs only (:data:`INT8_REWRITES`):

- ``silu_as_product``: each SiLU as ``x * sigmoid(x)``, the function itself (PyTorch's fused kernel may round its
  last bit differently), so a quantizer can put the sigmoid and the product in int8 (XNNPACK has no SiLU op; it
  runs one as these two). The module is replaced where it is used, never patched: Ultralytics shares one SiLU
  instance among all the convolutions of every model in a process.
"""

from __future__ import annotations

import copy
import types
from typing import Any

REWRITES = ("dfl_last_axis", "nearest_as_concat", "split_first_conv")
INT8_REWRITES = ("silu_as_product",)


def _dfl_forward(self: Any, x: Any) -> Any:
    import torch

    b, _, a = x.shape
    p = x.view(b, 4, self.c1, a).transpose(2, 3).softmax(-1)  # [b, 4, anchors, bins]
    return torch.nn.functional.linear(p, self.conv.weight.view(1, self.c1)).view(b, 4, a)


def _nearest2x_forward(self: Any, x: Any) -> Any:
    import torch

    b, c, h, w = x.shape
    x = torch.cat([x.unsqueeze(-1), x.unsqueeze(-1)], -1).view(b, c, h, 1, 2 * w)  # each column twice
    return torch.cat([x, x], 3).view(b, c, 2 * h, 2 * w)  # each row twice


def _c2f_forward(self: Any, x: Any) -> Any:
    import torch

    y = [self.cv1a(x), self.cv1b(x)]
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _c2psa_forward(self: Any, x: Any) -> Any:
    import torch

    a, b = self.cv1a(x), self.m(self.cv1b(x))
    return self.cv2(torch.cat((a, b), 1))


def _half(conv: Any, lo: int, hi: int) -> Any:
    """A copy of an Ultralytics ``Conv`` (fused or not) computing only output channels ``lo:hi``."""
    import torch

    def sliced(t: Any) -> Any:
        return torch.nn.Parameter(t[lo:hi].detach().clone(), requires_grad=False)

    out = copy.deepcopy(conv)  # a fused Conv's forward is bound to the copy (deepcopy rebinds methods)
    out.conv.weight = sliced(conv.conv.weight)
    out.conv.out_channels = hi - lo
    if conv.conv.bias is not None:
        out.conv.bias = sliced(conv.conv.bias)
    bn = getattr(conv, "bn", None)
    if bn is not None:
        out.bn.weight, out.bn.bias = sliced(bn.weight), sliced(bn.bias)
        out.bn.running_mean, out.bn.running_var = bn.running_mean[lo:hi].clone(), bn.running_var[lo:hi].clone()
        out.bn.num_features = hi - lo
    return out


def _split_first_conv(m: Any, forward: Any) -> None:
    c = m.cv1.conv.out_channels // 2
    m.cv1a, m.cv1b = _half(m.cv1, 0, c), _half(m.cv1, c, 2 * c)
    del m.cv1
    m.forward = types.MethodType(forward, m)


def _silu_as_product(model: Any) -> int:
    """Every SiLU child module replaced by its own ``x * sigmoid(x)`` module; how many uses were replaced."""
    import torch

    class SiLUProduct(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x * torch.sigmoid(x)

    uses = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is torch.nn.SiLU]
    for parent, name in uses:
        setattr(parent, name, SiLUProduct())
    return len(uses)


def apply(model: Any, names: tuple[str, ...] = REWRITES) -> dict[str, int]:
    """Apply the rewrites ``names`` to ``model`` in place; how many modules each changed."""
    import torch
    from ultralytics.nn.modules.block import C2PSA, DFL, C2f

    unknown = sorted(set(names) - set(REWRITES) - set(INT8_REWRITES))
    if unknown:
        raise ValueError(f"unknown rewrite {unknown[0]!r}: one of {', '.join(REWRITES + INT8_REWRITES)}")
    done = dict.fromkeys(names, 0)
    if "silu_as_product" in names:
        done["silu_as_product"] = _silu_as_product(model)
    for m in list(model.modules()):
        kind = type(m)
        if "dfl_last_axis" in names and isinstance(m, DFL):
            m.forward = types.MethodType(_dfl_forward, m)
            done["dfl_last_axis"] += 1
        elif ("nearest_as_concat" in names and isinstance(m, torch.nn.Upsample) and m.mode == "nearest"
              and m.size is None and m.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))):
            m.forward = types.MethodType(_nearest2x_forward, m)
            done["nearest_as_concat"] += 1
        elif "split_first_conv" in names and hasattr(m, "cv1") and hasattr(m.cv1, "conv"):
            if isinstance(m, C2f) and kind.forward is C2f.forward and m.cv1.conv.out_channels == 2 * m.c:
                _split_first_conv(m, _c2f_forward)
                done["split_first_conv"] += 1
            elif isinstance(m, C2PSA) and kind.forward is C2PSA.forward and m.cv1.conv.out_channels == 2 * m.c:
                _split_first_conv(m, _c2psa_forward)
                done["split_first_conv"] += 1
    return done
