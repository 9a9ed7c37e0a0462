"""onnx2cmsis: trained 1D CNNs (ONNX, Keras) -> int8 or int16 C calling CMSIS-NN kernels.

The Python API, importable from here (loaded on first use, so `import onnx2cmsis` stays cheap):

    import onnx2cmsis
    info = onnx2cmsis.inspect("model.h5")                  # layers, kernels, flash and RAM, no samples
    conv = onnx2cmsis.convert("model.h5", "calib.npy")     # -> Conversion (source, header, report)
    opts = onnx2cmsis.ConvertOptions(precision="int16", streaming=8)  # every setting, checked at once
    conv16 = onnx2cmsis.convert("model.h5", "calib.npy", opts)       # (or as keyword arguments)
    onnx2cmsis.write_outputs(conv, Path("out"))            # NAME.c/.h/.json/.mk/.cmake/.md, atomically
    check = onnx2cmsis.verify(conv, "test_x.npy", targets=["host", "m4"])  # -> Verification
    assert check.passed                                    # bit-exact with tflite-micro on every target
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"convert": "onnx2cmsis.api", "write_outputs": "onnx2cmsis.output_files", "Conversion": "onnx2cmsis.api",
        "Budget": "onnx2cmsis.options", "ConvertOptions": "onnx2cmsis.options", "verify": "onnx2cmsis.drivers.verification", "Verification": "onnx2cmsis.drivers.verification",
        "TargetResult": "onnx2cmsis.drivers.verification", "inspect": "onnx2cmsis.drivers.inspect_model",
        "Inspection": "onnx2cmsis.drivers.inspect_model", "ConversionError": "onnx2cmsis.errors"}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'onnx2cmsis' has no attribute {name!r}")
