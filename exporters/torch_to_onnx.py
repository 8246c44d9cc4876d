"""torch modules -> ONNX files, quietly: the one call both exporters make to torch.onnx.

torch's exporter (dynamo) and onnxruntime's quantizer print deprecation notices, tips and
progress to stdout and the log; none of it is the user's business, and stdout is where the CLI
prints its JSON report.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from xtm.signals import signals_held

__all__ = ["export_encoder", "quiet_logs", "torch_to_onnx"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence the exporters' and quantizer's log chatter (torchvision notices, pre-processing tips)."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def torch_to_onnx(module: Any, args: tuple[Any, ...], path: Path, *, input_names: Sequence[str],
                  output_names: Sequence[str], dynamic_shapes: dict[str, dict[int, Any]], opset: int) -> None:
    """torch.onnx.export with the dynamo exporter, every weight inside the file (a bundle never
    reads external data) and its chatter sent to stderr or dropped."""
    import torch

    # Signals wait for the exporter (seconds): one raised inside dynamo's traced frames was a SIGSEGV.
    with signals_held(on_hold=_say_held), warnings.catch_warnings(), quiet_logs(), \
            contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, verbose=False,
                          external_data=False, report=False)


def _say_held(signum: int) -> None:
    logger.warning(f"{signal.Signals(signum).name}: stopping once this graph is exported (seconds); "
                   "a second signal stops at once")


def export_encoder(model: Any, lang_index: int, vocab_size: int, path: Path, opset: int) -> None:
    """One language's bag-of-words encoder (bow float32 [n, V] -> theta), as the exporter writes it
    (dense input; graph_rewrites.finish_encoder makes the bundle's graph from it), checked by onnx."""
    import onnx
    import torch

    encoder = model.encoder_for(lang_index).eval()
    torch_to_onnx(encoder, (torch.zeros(2, vocab_size),), path, input_names=["bow"], output_names=["theta"],
                  dynamic_shapes={"bow": {0: torch.export.Dim("n")}}, opset=opset)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
