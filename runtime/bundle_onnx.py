"""Which external-data files an ONNX graph names, read from the protobuf wire format (torch-, onnx-free).

An ONNX graph may keep its weights in "external data" files it names itself, which onnxruntime
would then read from anywhere, outside a bundle's manifest and its checksums. The bundle reader
(xtm.runtime.bundle) refuses any graph for which `onnx_external_data` finds one.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

from xtm.errors import XtmError, os_error

__all__ = ["onnx_external_data"]

# Why not onnx.load: the runtime does not depend on the onnx package. Why not onnxruntime: it has
# no switch that refuses external data, and loading a graph from bytes resolves external files
# against the working directory instead. The wire format is simple and stable: each field is
# a varint key (field number << 3 | wire type) then a varint, 8 or 4 bytes, or a length-prefixed
# payload. Only the messages on a path from ModelProto to a TensorProto are entered (field numbers
# from onnx/onnx.proto); everything else, weights included, is skipped by its length, so scanning
# an 80 MB graph touches little more than its headers.

_ONNX_PATHS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},          # initialization, algorithm
    "function": {7: "node", 11: "attribute"},          # node, attribute_proto (defaults)
    "graph": {1: "node", 5: "tensor", 15: "sparse"},    # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},               # values, indices
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _LOCATION_EXTERNAL = 13, 14, 1
_MAX_DEPTH = 64  # subgraphs (If, Loop) nest; a deeper file is malformed or hostile


class _MalformedError(ValueError):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _MalformedError(f"truncated or overlong varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Any:
    """(field number, wire type, varint value or payload start, payload end) of one message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _MalformedError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _MalformedError(f"field {number} runs past the end of its message at byte {pos}")
            yield number, wire, pos, pos + size
            pos += size
            continue
        if wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _MalformedError(f"truncated fixed-width field {number}")
            continue
        raise _MalformedError(f"unsupported wire type {wire} (field {number}) at byte {pos}")


def _tensor_external(buf: Any, start: int, end: int) -> str | None:
    """The location a TensorProto reads its data from, or None when its data is inline."""
    external, location = False, None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_DATA_LOCATION and wire == 0 and a == _LOCATION_EXTERNAL:
            external = True
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            entry = {n: bytes(buf[x:y]) for n, w, x, y in _fields(buf, a, b) if w == 2}
            if entry.get(1) == b"location":
                location = entry.get(2, b"").decode("utf-8", "replace")
    if not external:
        return None
    return location if location is not None else "<no location>"


def onnx_external_data(path: str | Path) -> list[str]:
    """Locations of every external-data file an ONNX model's tensors name ([] when all data is inline).

    Covers initializers, sparse initializers, tensors in node attributes (Constant), subgraphs,
    functions and training graphs. Raises XtmError when the file is not a well-formed protobuf.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise XtmError("not an ONNX model: the file is empty", path=path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan_model(buf, len(buf))
    except _MalformedError as e:
        raise XtmError(f"not a valid ONNX model ({e})", path=path) from e
    except OSError as e:
        raise os_error(f"cannot read the ONNX model: {e.strerror or e}", e, path=path) from e


def _scan_model(buf: Any, size: int) -> list[str]:
    found: list[str] = []
    stack: list[tuple[str, int, int, int]] = [("model", 0, size, 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _MalformedError(f"messages nested deeper than {_MAX_DEPTH}")
        if kind == "tensor":
            location = _tensor_external(buf, start, end)
            if location is not None:
                found.append(location)
            continue
        children = _ONNX_PATHS[kind]
        for number, wire, a, b in _fields(buf, start, end):
            child = children.get(number)
            if child is not None and wire == 2:
                stack.append((child, a, b, depth + 1))
    return list(dict.fromkeys(found))
