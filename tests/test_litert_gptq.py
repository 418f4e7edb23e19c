"""GPTQ rounding of LiteRT int8 convolution weights: the algorithm on its own, the convolution patches it
needs, and the rounding of a real LiteRT export (the smoke run's FP32 model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yoloq.backends.litert_gptq import QMAX, apply, gptq_round, name_filter, patches


def _on_grid(w: np.ndarray) -> bool:
    """Whether every row of ``w`` lies on the symmetric int8 grid of its own largest weight (max |w| / 127)."""
    s = np.abs(w).max(axis=1, keepdims=True) / QMAX
    q = w / s
    return bool(np.allclose(q, np.round(q), atol=1e-3) and np.allclose(np.abs(q).max(axis=1), QMAX))


def test_gptq_moves_a_layers_output_less_than_rounding_to_nearest():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(48, 48))
    x = rng.normal(size=(4000, 48)) @ mix  # correlated inputs, as a convolution's patches are
    w = rng.normal(size=(16, 48)) * 0.05
    h = x.T @ x / len(x)
    q = gptq_round(w, h)
    s = np.abs(w).max(axis=1, keepdims=True) / QMAX
    nearest = np.clip(np.round(w / s), -QMAX, QMAX) * s
    err_gptq = np.linalg.norm(x @ (w - q).T)
    err_nearest = np.linalg.norm(x @ (w - nearest).T)
    assert err_gptq < 0.85 * err_nearest, (err_gptq, err_nearest)  # 0.77 with this seed
    assert _on_grid(q) and np.allclose(np.abs(q).max(axis=1), np.abs(w).max(axis=1))  # the same scales


@pytest.mark.parametrize("stride,dilation,same", [((1, 1), (1, 1), True), ((2, 2), (1, 1), False),
                                                  ((2, 2), (1, 1), True), ((1, 1), (2, 2), True)])
def test_patches_reproduce_a_tflite_convolution(stride, dilation, same):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    x = rng.normal(size=(11, 9, 5)).astype(np.float32)  # HWC
    w = rng.normal(size=(7, 3, 3, 5)).astype(np.float32)  # OHWI, as TFLite stores CONV_2D weights
    cols = patches(x, 3, 3, stride, dilation, same)
    y = cols @ w.reshape(7, -1).T
    xt = torch.from_numpy(x).permute(2, 0, 1)[None]
    if same:  # TFLite SAME: the output size is ceil(size / stride), any odd padding at the end
        ho, wo = -(-11 // stride[0]), -(-9 // stride[1])
        ph = max((ho - 1) * stride[0] + 2 * dilation[0] + 1 - 11, 0)
        pw = max((wo - 1) * stride[1] + 2 * dilation[1] + 1 - 9, 0)
        xt = F.pad(xt, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    ref = F.conv2d(xt, torch.from_numpy(w).permute(0, 3, 1, 2), stride=stride, dilation=dilation)
    ref = ref[0].permute(1, 2, 0).reshape(-1, 7).numpy()
    assert y.shape == ref.shape
    assert np.allclose(y, ref, atol=1e-4)


@pytest.mark.shared
def test_gptq_rounds_a_real_litert_export_on_the_quantizers_grid(smoke_run, tmp_path: Path):
    """The smoke run's FP32 LiteRT model: every CONV_2D outside the float scope comes back on its int8 grid with
    the same scales, the head's output convolutions untouched, and the model's output close to FP32's."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu
    from conftest import SHARED

    from yoloq.backends.litert_scope import float_weight_patterns
    from yoloq.models import Head
    from yoloq.preprocess import prepare, read_image

    fp32 = next((smoke_run["dir"] / "artifacts").rglob("*fp32.tflite"))
    head = Head(type="Detect", index=23, dfl=True, end2end=False)
    rounds = name_filter(float_weight_patterns({}, head), set())  # the default scope's float-stored weights
    imgs = sorted((SHARED / "datasets/coco-mini/train2017").glob("*.jpg"))[:2]
    batches = [prepare([read_image(p)], 320)[0] for p in imgs]
    out = tmp_path / "gptq.tflite"
    done = apply(fp32, out, iter(batches), rounds)
    assert done["images"] == 2 and done["convolutions"] > 50, done

    def convs(path: Path) -> dict[str, np.ndarray]:
        m = fu.read_model(str(path))
        g = m.subgraphs[0]
        res = {}
        for op in g.operators:
            kind = fu.TFL_OP_CODE_TO_NAME.get(m.operatorCodes[op.opcodeIndex].builtinCode)
            if getattr(kind, "name", "") == "CONV_2D":
                t = g.tensors[op.inputs[1]]
                res[fu.get_op_scope(op, g.tensors)] = fu.get_tensor_data(t, m.buffers).reshape(t.shape[0], -1)
        return res

    before, after = convs(fp32), convs(out)
    changed = [n for n in after if not np.array_equal(before[n], after[n])]
    assert len(changed) == done["convolutions"]
    assert all(rounds(n) and _on_grid(after[n]) for n in changed)
    assert all(np.allclose(np.abs(after[n]).max(1), np.abs(before[n]).max(1)) for n in changed)  # same scales
    assert any(not rounds(n) for n in after)  # the head's output convolutions: in float, left as they were

    def run(path: Path) -> np.ndarray:
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], batches[0])
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    a, b = run(fp32), run(out)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99  # int8-grid weights alone: close to FP32
