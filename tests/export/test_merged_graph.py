"""export/merged.py on hand-built graphs: constants of one name stay apart per graph, unnamed nodes load,
the mask decides where it forbids a branch, and ties go to the first branch as ``np.argmax`` does."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lightning_amortized.export.merged import merge_shared_state_step  # noqa: E402
from lightning_amortized.export.steps import ExportError  # noqa: E402

F = 3


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def branch(scale: float, const: float):
    """y = x * c + k, h' = h + k; ``c`` an initializer and ``k`` a Constant of the same names in both branches;
    no node is named."""
    c = numpy_helper.from_array(np.full((1, F), scale, np.float32), "c")
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full((1, F), const, np.float32))),
             helper.make_node("Mul", ["x", "c"], ["t"]), helper.make_node("Add", ["t", "k"], ["y"]),
             helper.make_node("Identity", ["y"], ["logits"]), helper.make_node("Add", ["state.h", "k"], ["state_out.h"])]
    return _model(nodes, [("x", [1, F]), ("state.h", [1, F])], [("y", [1, F]), ("logits", [1, F]),
                                                                 ("state_out.h", [1, F])], [c])


def arbitrator():
    """logits = [sum(x), 0] + prev_gate: positive frames want branch 0, negative ones branch 1, zero ties."""
    k = numpy_helper.from_array(np.array([[1.0, 0.0]], np.float32), "k")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1), helper.make_node("Mul", ["s", "k"], ["t"]),
             helper.make_node("Add", ["t", "prev_gate"], ["logits"])]
    return _model(nodes, [("x", [1, F]), ("backlog_ms", [1]), ("prev_gate", [1, 2])], [("logits", [1, 2])], [k])


def test_merged_graph_runs_the_chosen_branch_with_its_own_constants() -> None:
    merged = merge_shared_state_step(arbitrator(), branch(2.0, 10.0), branch(3.0, 100.0), slow_index=1, shared=set())
    onnx.checker.check_model(merged, full_check=True)
    sess = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    x, h = np.ones((1, F), np.float32), np.zeros((1, F), np.float32)
    for sign, mask, want in ((1.0, [0, 0], 0), (-1.0, [0, 0], 1), (1.0, [0, -np.inf], 0), (1.0, [-np.inf, 0], 1),
                             (0.0, [0, 0], 0)):  # the last: a tie, first index as np.argmax
        y, _, h_out, choice = sess.run(None, {"x": sign * x, "backlog_ms": np.zeros(1, np.float32),
                                              "prev_gate": np.zeros((1, 2), np.float32), "state.h": h,
                                              "mask": np.array([mask], np.float32)})
        scale, const = ((2.0, 10.0), (3.0, 100.0))[want]
        assert int(choice[0]) == want, (sign, mask)
        assert np.array_equal(y, sign * x * scale + const) and np.array_equal(h_out, h + const)


def test_branches_of_other_interfaces_are_refused() -> None:
    other = _model([helper.make_node("Identity", ["x"], ["y"])], [("x", [1, F])], [("y", [1, F])])
    with pytest.raises(ExportError, match="different interfaces"):
        merge_shared_state_step(arbitrator(), branch(2.0, 1.0), other, slow_index=1, shared=set())
