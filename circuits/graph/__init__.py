"""The computational graph: its layout (:class:`GraphStructure`), scored circuits (:class:`Graph`), files.

Modules, one idea each: ``structure`` (index layout, MIB names), ``graph`` (the ``Graph`` container),
``selection`` (scores -> kept edges), ``pruning`` (kept edges -> input-to-logits circuit), ``views``
(networkx / pandas), ``io`` (MIB JSON, GraphML, .pt).
"""

from circuits.graph.graph import Graph
from circuits.graph.io import GraphFormatError, GraphMismatchError, GraphNotFoundError
from circuits.graph.selection import SelectionError
from circuits.graph.structure import GraphStructure

__all__ = ["Graph", "GraphFormatError", "GraphMismatchError", "GraphNotFoundError", "GraphStructure", "SelectionError"]
