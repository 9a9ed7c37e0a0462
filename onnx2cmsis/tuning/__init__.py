"""The searches that run the whole quantized graph on the calibration samples and keep what measures
best: calibration method and dense-weight granularity (search), bias correction, and the per-layer
precision of `--precision auto`. Above the handlers (ops), quantization (quant) and the memory plan
(plan), which they call."""
