"""INT8 recovery with the FP32 model as the teacher: no labels, never an evaluation image.

What it offers, shared by every backend that recovers on its own grid (each backend keeps its format's parts):

- :mod:`yoloq.recover.rounding`: learned rounding of convolution weights on a format's per-channel symmetric grid
  (GPTQ against the FP32 layer's own inputs), the input patches of an NCHW convolution and their second moments;
- :mod:`yoloq.recover.distill`: quantization-aware distillation from the FP32 model through a format's fake
  quantizers on unlabelled calibration images (a step or minute budget, exact augmentations, two losses, a held or
  cosine learning rate); NCNN and ONNX Runtime train their own file's weights with it (ONNX Runtime's grids read
  from its quantized file: :mod:`yoloq.backends.onnxruntime.recovery`), the IMX500 a checkpoint MCT then quantizes,
  and MCT's QAT in the IMX500's worker takes its loss, augmentation and learning rate;
- :mod:`yoloq.recover.cost`: what a recovery step cost (seconds, peak resident memory), for the record.

Float fallback chosen by sensitivity goes through ``Backend.sensitivity`` / ``Backend.keep_float`` and ``yoloq tune``'s
worst-N candidates (:mod:`yoloq.tune.search`), which keep the fewest ranked blocks in float that reach the budget on
tuning images.
"""
