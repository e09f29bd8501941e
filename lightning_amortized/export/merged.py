"""One ONNX graph per frame for a shared-state AmNet: the arbitrator and both branches behind an ``If`` node.

The runtime calls it once per encoder frame instead of twice (arbitrator, then the chosen branch):
on ONNX Runtime with one thread that saved 2-3 % of the time per frame here
(``docs/results/device_wallclock.md``). The host still owns the backlog and the latency guard: it
passes the guard's verdict as ``mask (1, K)``, added to the arbitrator's logits (``0`` for an
allowed branch, ``-inf`` for a forbidden one), and the graph takes the ``argmax`` as the
runtime's two-call loop does, then runs only that branch.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from lightning_amortized.export.steps import ExportError

#: File name of the merged graph in an export folder.
MERGED_FILE = "amnet_step.onnx"


def _renamed_nodes(graph: Any, prefix: str, keep: Collection[str]) -> tuple[list[Any], Any]:
    """Copies of ``graph``'s nodes with every value name not in ``keep`` prefixed; and the renaming function."""
    import onnx

    def name(n: str) -> str:
        return n if n == "" or n in keep else prefix + n

    nodes = []
    for i, node in enumerate(graph.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportError(f"Cannot merge graph {graph.name!r}: node {node.name!r} has a subgraph.")
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[:] = [name(i) for i in node.input]
        new.output[:] = [name(o) for o in node.output]
        new.name = prefix + (node.name or f"node{i}")  # ONNX Runtime refuses two nodes of one name
        nodes.append(new)
    return nodes, name


def merge_shared_state_step(arbitrator: Any, fast: Any, slow: Any, slow_index: int, shared: Collection[str]) -> Any:
    """Merge the three step graphs of a two-branch shared-state AmNet into one ``ModelProto``.

    Args:
        arbitrator: The arbitrator graph ``(x, backlog_ms, prev_gate[, load]) -> logits (1, 2)``.
        fast: Branch 0's step graph ``(x, state...) -> (y, logits, state_out...)``.
        slow: Branch 1's step graph, the same inputs and outputs as ``fast``.
        slow_index: The branch the ``If`` node's ``then`` side runs (the other one runs otherwise).
        shared: Initializer names that are model tensors (the same tensor wherever it occurs; kept as
            they are). Every other initializer and value is prefixed per graph, so that constants of
            equal names in different graphs stay apart.

    Returns:
        A model with the arbitrator's inputs, the branches' state inputs and ``mask (1, 2)``, and
        outputs ``y (1, D)``, ``logits (1, V)``, the state outputs and ``choice (1,)`` (int64).

    Raises:
        ExportError: the branches' inputs or outputs differ, or a graph has subgraphs.
    """
    import onnx
    from onnx import TensorProto, helper

    ins = lambda g: [i.name for i in g.graph.input]  # noqa: E731
    outs = lambda g: [o.name for o in g.graph.output]  # noqa: E731
    if ins(fast) != ins(slow) or outs(fast) != outs(slow):
        raise ExportError(
            f"Cannot merge branch graphs with different interfaces: {ins(fast)} -> {outs(fast)} and "
            f"{ins(slow)} -> {outs(slow)}."
        )
    outer = set(ins(arbitrator)) | set(ins(slow)) | {"mask"}
    keep = outer | set(shared)
    inits: dict[str, Any] = {}
    for prefix, g in (("arbitrator/", arbitrator), ("fast/", fast), ("slow/", slow)):
        for init in g.graph.initializer:
            new = onnx.TensorProto()
            new.CopyFrom(init)
            if init.name not in keep:
                new.name = prefix + init.name
            inits.setdefault(new.name, new)

    def body(g: Any, prefix: str) -> Any:
        nodes, name = _renamed_nodes(g.graph, prefix, keep)
        results = []
        for o in g.graph.output:
            nodes.append(helper.make_node("Identity", [name(o.name)], [f"{prefix}out.{o.name}"]))
            results.append(helper.make_tensor_value_info(f"{prefix}out.{o.name}", TensorProto.FLOAT, None))
        return helper.make_graph(nodes, prefix.rstrip("/"), [], results)

    nodes, arb_name = _renamed_nodes(arbitrator.graph, "arbitrator/", keep)
    nodes += [
        helper.make_node("Add", [arb_name(arbitrator.graph.output[0].name), "mask"], ["masked_logits"]),
        helper.make_node("ArgMax", ["masked_logits"], ["choice"], axis=1, keepdims=0),
        helper.make_node("Squeeze", ["choice"], ["choice_scalar"]),
        helper.make_node("Constant", [], ["slow_index"],
                         value=helper.make_tensor("slow_index_value", TensorProto.INT64, [], [int(slow_index)])),
        helper.make_node("Equal", ["choice_scalar", "slow_index"], ["is_slow"]),
        helper.make_node("If", ["is_slow"], outs(slow), then_branch=body(slow, "slow/"), else_branch=body(fast, "fast/")),
    ]
    inputs = list(arbitrator.graph.input) + [i for i in slow.graph.input if i.name not in set(ins(arbitrator))]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 2]))
    outputs = list(slow.graph.output) + [helper.make_tensor_value_info("choice", TensorProto.INT64, [1])]
    graph = helper.make_graph(nodes, "amnet_step", inputs, outputs, initializer=list(inits.values()))
    model = helper.make_model(graph, opset_imports=arbitrator.opset_import)
    model.ir_version = arbitrator.ir_version
    return model
