"""What a standalone deploy bundle's ``predict.py`` loads its model with, per format: the runtime only.

Each loader is the source of a ``load_model(path, threads)`` function returning ``NCHW float32 batch -> raw head
output`` with boxes in input pixels, as every yoloq runtime returns it; ``yoloq export`` writes it into the bundle's
``predict.py`` in place of the template's stub.
"""

from __future__ import annotations

LOADERS = {
    "onnxruntime": '''
def load_model(path, threads):
    """ONNX Runtime on the CPU (its input dtype: a float16 graph takes float16)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    return lambda x: session.run(None, {inp.name: x.astype(dtype)})[0].astype(np.float32)
''',
    "openvino": '''
def load_model(path, threads):
    """OpenVINO on the CPU; an FP32 bundle asks for true f32 (OpenVINO runs BF16 on CPUs that have it otherwise)."""
    import openvino as ov

    xml = path if path.suffix == ".xml" else next(path.glob("*.xml"))
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if json.loads((HERE / "meta.json").read_text())["precision"] == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    request = ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()
''',
    "litert": '''
def load_model(path, threads):
    """LiteRT with XNNPACK; NHWC input where the model wants it; boxes back to input pixels (the export divides
    them by the input size)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    nchw = int(inp["shape"][1]) == 3
    size = int(inp["shape"][2] if nchw else inp["shape"][1])

    def run(x):
        it.set_tensor(inp["index"], np.ascontiguousarray(x if nchw else x.transpose(0, 2, 3, 1), inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if y.ndim == 3 and y.shape[1] < y.shape[2]:
            y[:, :4] *= size
        return y

    return run
''',
    "rknn": '''
def load_model(path, threads):
    """RKNN on a Rockchip board's NPU (rknn-toolkit-lite2 and the board's librknnrt), then the box decoding in
    float on its CPU (tail.onnx, ONNX Runtime), as yoloq split and scored it; the NPU reads uint8 pixels."""
    import onnxruntime as ort
    from rknnlite.api import RKNNLite

    npu = RKNNLite()
    if npu.load_rknn(str(path / "model.rknn")) != 0 or npu.init_runtime() != 0:
        raise SystemExit(f"rknn-toolkit-lite2 could not load {path / 'model.rknn'} on this device")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    tail = ort.InferenceSession(str(path / "tail.onnx"), so, providers=["CPUExecutionProvider"]) \\
        if (path / "tail.onnx").is_file() else None

    def run(x):
        ys = npu.inference(inputs=[np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)], data_format=["nchw"])
        if tail is None:
            return np.asarray(ys[0], np.float32)
        return tail.run(None, {i.name: y for i, y in zip(tail.get_inputs(), ys)})[0]

    return run
''',
    "executorch": '''
def load_model(path, threads):
    """ExecuTorch's runtime (XNNPACK delegate) on the program's forward method; it takes and gives torch tensors
    (the executorch package brings torch with it)."""
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])[0].numpy().copy()
''',
    "ncnn": '''
def load_model(path, threads):
    \"\"\"ncnn's runtime on model.ncnn.param/.bin: fp16 storage only in an FP16 bundle, int8 layers where the model
    has them (an ncnn blob has no batch axis: one image at a time).\"\"\"
    import ncnn

    precision = json.loads((HERE / "meta.json").read_text())["precision"]
    lines = (path / "model.ncnn.param").read_text().split("\\n")[2:]
    layers = [x.split() for x in lines if len(x.split()) >= 4]
    blob = lambda f, i: f[4 + int(f[2]) + i]  # noqa: E731 - the i-th top blob of a layer
    inp, out = next(blob(f, 0) for f in layers if f[0] == "Input"), blob(layers[-1], 0)
    net = ncnn.Net()
    net.opt.num_threads, net.opt.use_vulkan_compute = threads, False
    half = precision == "fp16"
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = half
    net.opt.use_bf16_storage, net.opt.use_int8_inference = False, precision == "int8"
    extra = path / "ncnn-options.json"  # options the model needs, e.g. no Winograd F(4,3) for 8-bit 3x3 weights
    for key, value in (json.loads(extra.read_text()) if extra.is_file() else {}).items():
        setattr(net.opt, key, value)
    net.load_param(str(path / "model.ncnn.param"))
    net.load_model(str(path / "model.ncnn.bin"))

    def run(x):
        ys = []
        for im in np.asarray(x, np.float32):
            ex = net.create_extractor()
            ex.input(inp, ncnn.Mat(np.ascontiguousarray(im)))
            ys.append(np.array(ex.extract(out)[1], np.float32))
        return np.stack(ys)

    return run
''',
    "imx500": '''
def load_model(path, threads):
    \"\"\"The IMX500 model simulated on a PC: MCT's quantized ONNX in ONNX Runtime with MCT's quantizer ops and Sony's
    NMS op registered (the camera itself runs packerOut.zip: see README.md); [1, K, 6] after the model's NMS.\"\"\"
    import mct_quantizers
    import onnxruntime as ort
    from edgemdt_cl.pytorch.nms import nms_ort  # noqa: F401 - registers Sony's NMS op

    so = mct_quantizers.get_ort_session_options()
    so.enable_mem_reuse = False
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(next(path.glob("*.onnx"))), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        boxes, scores, labels = session.run(None, {name: np.ascontiguousarray(x, np.float32)})[:3]
        return np.concatenate([boxes, scores[..., None], labels[..., None]], axis=-1).astype(np.float32)

    return run
''',
}
# the Python packages each bundle needs beside numpy and OpenCV
REQUIREMENTS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "ai-edge-litert",
                "rknn": "rknn-toolkit-lite2\nonnxruntime", "executorch": "executorch",
                "ncnn": "ncnn", "imx500": "onnxruntime\nonnxruntime-extensions\nmct-quantizers\nedge-mdt-cl\ntorch\n"
                                          "torchvision"}


def loader(fmt: str) -> tuple[str, str] | None:
    """The loader source and the runtime package of format ``fmt``; None when it has no standalone bundle."""
    return (LOADERS[fmt], REQUIREMENTS[fmt]) if fmt in LOADERS else None
