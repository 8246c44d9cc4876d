"""Reading a .npy header alone: its shape, order and dtype, before any value is allocated.

A header may claim terabytes or an object dtype; the callers (the runtime's topic-word weights, a
run's parity samples) check what it declares before they read a single value.
"""

from __future__ import annotations

from typing import IO

import numpy as np


def read_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the .npy header at f's position, leaving f at the first value.

    ValueError for a file that is not .npy or has a header numpy cannot read (version 3.0 included:
    its utf-8 field names are never what xtm writes); EOFError for a cut header."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    # numpy's own check takes True for a 1 (bool is an int): a shape of anything but counts is no array of ours
    if not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"its header's shape is not a list of counts: {shape!r}"[:200])
    return shape, fortran, dtype
