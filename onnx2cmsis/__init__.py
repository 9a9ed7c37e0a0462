"""onnx2cmsis: trained 1D CNNs (ONNX, Keras) -> int8 C calling CMSIS-NN kernels."""

__version__ = "0.1.0"
