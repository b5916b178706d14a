"""Put fp32 nodes back into a dynamically quantised graph: the sensitivity pass's fast path (export/search.py).

The sensitivity pass needs the per-channel int8 graph with one node group (an encoder layer, the embeddings) left in
fp32, once per group: 13 graphs for a 12-layer encoder. Quantising each with Optimum takes ~13 s for e5-small on 2
cores (ONNX Runtime's quantiser saves and reloads the 470 MB graph twice and quantises every weight channel by
channel in Python), ~3 minutes for the pass. But dynamic int8 quantises each weight node on its own, so "all of it
except group X" is the int8 graph with X's quantised chains swapped back for X's fp32 nodes, which takes about a
second. That is what this does; the candidate that is finally published is still quantised by Optimum.

How a node comes back: ONNX Runtime's quantiser keeps each quantised node's output name (the chain it builds, e.g.
DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul, ends in it). So the chain's last node is replaced by the fp32
node, whose inputs (the activation, the fp32 weight) exist in the fp32 graph, and what only that chain used (its
quantised weight, scales, zero points, an activation quantiser no other node reads) is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gamjeong.errors import GamjeongError

if TYPE_CHECKING:
    import onnx


def keep_in_fp32(quantized: onnx.ModelProto, fp32: onnx.ModelProto, node_names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `quantized` in which the named nodes of `fp32` are fp32 again."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    originals = {node.name: node for node in fp32.graph.node}
    fp32_weights = {init.name: init for init in fp32.graph.initializer}
    fp32_tensors = _tensors(fp32.graph)
    chain: set[str] = set()  # the quantised chains' nodes (by first output): the only ones the clean-up may drop
    # Valid throughout the loop: a replacement takes its chain's last node's place and output; nothing moves until
    # the clean-up at the end.
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    present = {init.name for init in graph.initializer}
    for name in node_names:
        original = originals.get(name)
        if original is None:
            raise GamjeongError(f"The fp32 graph has no node named {name!r}.")
        if len(original.output) != 1 or original.output[0] not in producers:
            raise GamjeongError(f"The quantised graph does not produce {name!r}'s output; it cannot go back to fp32.")
        at = producers[original.output[0]]
        if graph.node[at].name == name and graph.node[at].op_type == original.op_type:
            continue  # not quantised in the first place
        chain |= _chain(graph, at, producers, fp32_tensors)
        replacement = onnx.NodeProto()
        replacement.CopyFrom(original)
        del graph.node[at]
        graph.node.insert(at, replacement)
        for tensor in original.input:
            if tensor in fp32_weights and tensor not in present:
                graph.initializer.append(fp32_weights[tensor])
                present.add(tensor)
    _drop_unused(graph, chain)
    return model


def _tensors(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name of the fp32 graph: where a quantised chain begins."""
    names = {t.name for t in graph.input} | {t.name for t in graph.initializer}
    return names | {out for node in graph.node for out in node.output}


def _chain(graph: onnx.GraphProto, at: int, producers: dict[str, int], fp32_tensors: set[str]) -> set[str]:
    """The nodes that compute node `at`'s inputs from tensors of the fp32 graph (the quantised chain)."""
    found: set[str] = set()
    stack = [at]
    while stack:
        node = graph.node[stack.pop()]
        for tensor in node.input:
            j = producers.get(tensor)
            if tensor and tensor not in fp32_tensors and j is not None and tensor not in found:
                found.update(graph.node[j].output)
                stack.append(j)
    return found


def _drop_unused(graph: onnx.GraphProto, chain: set[str]) -> None:
    """Drop chain nodes whose outputs nothing reads any more (repeatedly), then initializers nothing reads."""
    outputs = {t.name for t in graph.output}
    while True:
        read = {tensor for node in graph.node for tensor in node.input} | outputs
        dead = [
            i
            for i, node in enumerate(graph.node)
            if node.output and node.output[0] in chain and not any(out in read for out in node.output)
        ]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    read = {tensor for node in graph.node for tensor in node.input} | outputs
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in read:
            del graph.initializer[i]
