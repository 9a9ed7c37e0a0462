"""Small PyTorch 1D CNNs exported with both exporters: shared by the tests and the benchmark report."""

from __future__ import annotations

from pathlib import Path


def _torch_models():
    import torch
    nn = torch.nn

    def regressor():  # ReLU6, padded strided max pool, strided dilated conv, linear output
        return nn.Sequential(
            nn.Conv1d(4, 8, 3, padding=1), nn.ReLU6(), nn.MaxPool1d(3, stride=2, padding=1),
            nn.Conv1d(8, 12, 5, stride=2, dilation=2, padding=3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 15, 6),
        ), (4, 64)

    def classifier():  # single channel, 'same' padding, softmax head
        return nn.Sequential(
            nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 8, 5, padding="same"),
            nn.ReLU(), nn.Flatten(), nn.Linear(8 * 50, 10), nn.Softmax(dim=1),
        ), (1, 100)

    def strided():  # no bias, pointwise conv, ceil-mode pool
        return nn.Sequential(
            nn.Conv1d(6, 16, 5, stride=3, bias=False), nn.ReLU(), nn.Conv1d(16, 8, 1), nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True), nn.Flatten(), nn.Linear(8 * 15, 3),
        ), (6, 90)

    def dense_output():  # a (N, C, W) output: the C returns it channel-major, like the model
        return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 3, 1)), (2, 50)

    return {"regressor": (regressor, "dynamo"), "classifier": (classifier, "legacy13"),
            "strided": (strided, "legacy11"), "dense_output": (dense_output, "dynamo")}


EXPORTS = ["regressor", "classifier", "strided", "dense_output"]


def export_torch(name: str, folder: Path) -> tuple[Path, tuple[int, int]]:
    import torch
    factory, exporter = _torch_models()[name]
    torch.manual_seed(EXPORTS.index(name))
    model, shape = factory()
    model.eval()
    path = folder / f"{name}.onnx"
    example_input = (torch.randn(1, *shape),)
    if exporter == "dynamo":
        torch.onnx.export(model, example_input, str(path), dynamo=True, external_data=False)
    else:
        opset = int(exporter[len("legacy"):])
        torch.onnx.export(model, example_input, str(path), dynamo=False, opset_version=opset)
    return path, shape


