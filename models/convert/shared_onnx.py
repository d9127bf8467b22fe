"""Graph helpers the converters share: who produces a tensor, renaming, and a canonical form.

A converter's output must be byte-identical from run to run (the manifest pins its sha256),
but tf2onnx numbers the names it makes with a process-global counter whose call order can
change between runs. `name_by_order` removes that: names depend only on the graph's structure.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx


class ConversionError(RuntimeError):
    """The package or the converted graph is not what the converter expects."""


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Map tensor name -> node producing it."""
    return {output: node for node in graph.node for output in node.output}


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears (node I/O, graph I/O)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in (*graph.input, *graph.output):
        if info.name == old:
            info.name = new


def dependency_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in post-order of a depth-first walk from the graph outputs, inputs in order.

    The order depends only on the graph's structure, not on the order or names tf2onnx chose;
    nodes that feed no output are left out. Iterative: deep graphs would exhaust recursion.
    """
    producer = producers(graph)
    done: set[str] = set()
    ordered = []
    for output in graph.output:
        stack = [producer[output.name]]
        while stack:
            node = stack[-1]
            if node.output[0] in done:
                stack.pop()
                continue
            pending = [
                producer[name]
                for name in node.input
                if name in producer and producer[name].output[0] not in done
            ]
            if pending:
                stack.append(pending[0])
            else:
                done.add(node.output[0])
                ordered.append(node)
                stack.pop()
    return ordered


def name_by_order(graph: onnx.GraphProto, renamed: Callable[[str], bool], separator: str) -> None:
    """Nodes in dependency order, names chosen by structure alone.

    Each tensor name `renamed` selects becomes ``<op type><separator><k>`` (an output) or
    ``const<separator><k>`` (an initializer), k counting tensors in dependency order; nodes are
    named after their first output and lose their doc strings; unused initializers are dropped.
    """
    nodes = dependency_order(graph)
    initializers = {init.name: init for init in graph.initializer}
    mapping: dict[str, str] = {}
    for node in nodes:
        for name in node.input:
            if name and name not in mapping:
                mapping[name] = f"const{separator}{len(mapping)}" if renamed(name) else name
        for name in node.output:
            mapping[name] = f"{node.op_type}{separator}{len(mapping)}" if renamed(name) else name
    for node in nodes:
        node.input[:] = [mapping[name] if name else name for name in node.input]
        node.output[:] = [mapping[name] for name in node.output]
        node.name = node.output[0]
        node.doc_string = ""
    used = [initializers[name] for name in mapping if name in initializers]
    for init in used:
        init.name = mapping[init.name]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(used)
