"""Sony IMX500 (the Raspberry Pi AI Camera's sensor NPU): the backend and the export worker that runs Sony's tools in
their own environment."""

from yoloq.backends.imx500.backend import Imx500Backend

__all__ = ["Imx500Backend"]
