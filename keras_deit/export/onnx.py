"""ONNX: written by PyTorch's exporter (dynamo, onnxscript) around the serving function, run and
described with onnxruntime (see the package docstring for why not Keras' exporter)."""

import contextlib
import io
import os
import warnings

import numpy as np

from keras_deit.export.common import ExportError, _flatten_outputs, _serving_function

def _write_onnx(model, preprocessing, spec, path):
    import torch

    serve = _serving_function(model, preprocessing)
    names = list(_flatten_outputs(model.output))

    class Serving(torch.nn.Module):
        # A plain module around the Keras model: positional tensor in, tuple out, so the
        # exporter can name the inputs and outputs.
        def __init__(self):
            super().__init__()
            self.model = model
            self.preprocessing = preprocessing

        def forward(self, inputs):
            outputs = serve(inputs)
            return tuple(outputs[name] for name in names)

    module = Serving().eval()
    shape = spec["shape"]
    # Sample size 2 on free axes: torch.export specializes axes of size 1.
    sample = np.zeros([2 if d is None else d for d in shape], spec["dtype"])
    if spec["dtype"] == "float32":
        sample = np.random.default_rng(0).standard_normal(sample.shape).astype("float32")
    dims = {}
    for axis, size in enumerate(shape):
        if size is None:
            dims[axis] = torch.export.Dim("batch" if axis == 0 else f"dim_{axis}", min=1)
    with _quiet():
        try:
            program = torch.onnx.export(
                module, (torch.from_numpy(sample),), dynamo=True, input_names=[spec["name"]],
                output_names=names, dynamic_shapes=(dims or None,), verbose=False,
                opset_version=20,
            )
            program.optimize()
            program.save(path)
        except Exception as e:
            raise ExportError(f"the ONNX export failed ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:600]})") from None


@contextlib.contextmanager
def _quiet():
    """Silences the exporter's progress prints and its deprecation warnings (torch internals,
    nothing the caller can act on)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def run_onnx(path, inputs):
    """An ONNX file on `inputs`, with onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: inputs})
    return dict(zip(names, values))


def describe_onnx(path):
    """({input name: (shape, dtype)}, [output names]) as the ONNX graph declares them."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
    inputs = {i.name: (tuple(d if isinstance(d, int) else None for d in i.shape),
                       dtypes.get(i.type, i.type))
              for i in session.get_inputs()}
    return inputs, sorted(o.name for o in session.get_outputs())
