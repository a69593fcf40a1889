"""Model shapes without weights: the public ``config.json`` of each architecture, as data.

A shape gives the two numbers every memory decision needs: weight bytes and KV bytes per
token. Both engines use it: the sim engine sizes its fake device from it, the sglang engine
gets the shape directory as ``--model-path`` with ``--load-format dummy``.
"""

from orchestrator.shapes.shape import (
    KNOWN_MODEL_IDS,
    ModelShape,
    ShapeError,
    list_shapes,
    load_shape,
    resolve_shape,
    shape_dir,
)

__all__ = [
    "KNOWN_MODEL_IDS",
    "ModelShape",
    "ShapeError",
    "list_shapes",
    "load_shape",
    "resolve_shape",
    "shape_dir",
]
