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


TWO_IN_TWO_OUT_SHAPES = [(4, 64), (2, 32)]  # inputs "a" and "b", without batch


def _two_in_two_out():
    import torch
    nn = torch.nn

    class TwoInTwoOut(nn.Module):
        """a (4, 64) -> conv, relu, pool; b (2, 32) -> conv, relu; concat channels -> conv, relu; then
        "logits" (5) from a Linear on the flattened map and "map" (2, 32) from a pointwise conv."""

        def __init__(self) -> None:
            super().__init__()
            self.branch_a = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2))
            self.branch_b = nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU())
            self.trunk = nn.Sequential(nn.Conv1d(16, 8, 3, padding=1), nn.ReLU())
            self.logits = nn.Linear(8 * 32, 5)
            self.map = nn.Conv1d(8, 2, 1)

        def forward(self, a, b):
            x = self.trunk(torch.cat([self.branch_a(a), self.branch_b(b)], dim=1))
            return self.logits(torch.flatten(x, 1)), self.map(x)

    return TwoInTwoOut()


def export_torch_two_in_two_out(folder: Path) -> tuple[Path, list[tuple[int, ...]]]:
    """Two inputs ("a", "b") and two outputs ("logits", "map"), exported with the dynamo exporter."""
    import torch
    torch.manual_seed(len(EXPORTS))
    model = _two_in_two_out().eval()
    path = folder / "two_in_two_out.onnx"
    example_inputs = tuple(torch.randn(1, *shape) for shape in TWO_IN_TWO_OUT_SHAPES)
    torch.onnx.export(model, example_inputs, str(path), input_names=["a", "b"], output_names=["logits", "map"],
                      dynamo=True, external_data=False)
    return path, list(TWO_IN_TWO_OUT_SHAPES)
