"""What ExecuTorch's INT8 program quantizes, and what its XNNPACK delegate takes: PT2E's XNNPACK quantizer kept to a
scope of module names, and optionally SiLU in int8.

XNNPACK runs a SiLU as a sigmoid and a product. The XNNPACK quantizer annotates the product but not the sigmoid, and
ExecuTorch's partitioner takes a sigmoid in float only, so by default every SiLU inside the int8 region runs in float
between two conversions. XNNPACK itself has an int8 sigmoid (a table at a fixed output scale of 1/256 about -128).
``int8_silu`` annotates each sigmoid with those fixed parameters and lowers with a partitioner that takes it.
"""

from __future__ import annotations

from typing import Any

SIGMOID_SCALE, SIGMOID_ZERO = 1.0 / 256, -128  # an int8 sigmoid's output: 0..1 in 256 steps
UPSAMPLE = "torch.nn.modules.upsampling.Upsample"  # the module type as torch.export's nn_module_stack names it


def in_int8(floats: set[str], quantized: set[str]) -> Any:
    """PT2E's node filter for a scope: a graph node is quantized unless a module it runs in is one of ``floats``,
    except where one is one of ``quantized`` (the module paths in its ``nn_module_stack``)."""

    def keep(node: Any) -> bool:
        names = {v[0] for v in (node.meta.get("nn_module_stack") or {}).values()}
        return bool(names & quantized) or not names & floats

    return keep


def scoped(quantizer: Any, keep: Any, config: Any, int8_silu: bool) -> Any:
    """``quantizer`` annotating only the nodes ``keep`` accepts. Its filter function alone is not enough: the XNNPACK
    quantizer annotates every ``cat`` whatever the filter, and a float head's decode concatenates boxes (0..imgsz
    pixels) with scores (0..1), which one shared int8 scale destroys (scores off by 0.6 on the shared YOLO11n).
    ``int8_silu``: each sigmoid in scope gets int8 at XNNPACK's fixed output parameters (``config``'s input spec),
    and the reshapes of a rewritten nearest upsample share their input's parameters (XNNPACK's int8 reshape
    requires it; that upsample reads a SiLU's int8 output then)."""
    annotate = quantizer.annotate
    quantizer.set_filter_function(keep)

    def annotate_in_scope(model: Any) -> Any:
        model = annotate(model)
        for node in model.graph.nodes:
            if not keep(node):
                node.meta.pop("quantization_annotation", None)
            elif int8_silu:
                _annotate_silu_part(node, config)
        return model

    quantizer.annotate = annotate_in_scope
    return quantizer


def _annotate_silu_part(node: Any, config: Any) -> None:
    import torch
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    aten = torch.ops.aten
    if node.target == aten.sigmoid.default:
        out = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=SIGMOID_SCALE, zero_point=SIGMOID_ZERO,
                                           quant_min=-128, quant_max=127)
    elif node.target in (aten.unsqueeze.default, aten.view.default) and UPSAMPLE in {
            str(t) for _, t in (node.meta.get("nn_module_stack") or {}).values()}:
        out = SharedQuantizationSpec((node.args[0], node))
    else:
        return
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map={node.args[0]: config.input_activation}, output_qspec=out, _annotated=True)


def partitioner(int8_silu: bool) -> Any:
    """ExecuTorch's XNNPACK partitioner; ``int8_silu``: with its sigmoid config taking int8 sigmoids too."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import SigmoidConfig
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if not int8_silu:
        return XnnpackPartitioner()

    class Int8SigmoidConfig(SigmoidConfig):
        def supported_precision_types(self) -> list[Any]:
            return [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]

    configs = [Int8SigmoidConfig if c is SigmoidConfig else c for c in ALL_PARTITIONER_CONFIGS]
    return XnnpackPartitioner(configs=configs)
