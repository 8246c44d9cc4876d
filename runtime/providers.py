"""Which ONNX Runtime build is installed, and which execution providers a model runs on.

ONNX Runtime comes as several wheels (`onnxruntime` for CPUs, `onnxruntime-gpu` for NVIDIA GPUs,
...) that all install the same `onnxruntime` package directory. Two of them in one environment
overwrite each other's files: whichever was installed last wins, file by file, and what is left can
be the CPU build, the GPU build, or a mix that does not import. pip does not prevent it, so this
module detects it (`installed_runtimes`, from the distributions' metadata) and says how to fix it.

Providers are named as onnxruntime names them (`CUDAExecutionProvider`) or by their short name
(`cuda`, `cpu`, `tensorrt`, `coreml`, `dml`, ...), in preference order. `resolve_providers` checks a
request against what the installed build offers; `check_used` compares it with what a session
actually got (onnxruntime falls back to the CPU when, say, CUDA's libraries are missing, logging
and carrying on). Only the names and the session's own report are looked at here: nothing in this
module needs a GPU, so its logic is tested on any machine.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from typing import Any

from xtm.errors import TransientError, XtmError, exception_text

__all__ = ["CPU", "CUDA", "INSTALL_CPU", "INSTALL_GPU", "RUNTIME_DISTRIBUTIONS", "check_used", "double_install_note",
           "import_onnxruntime", "installed_runtimes", "onnxruntime_error", "parse_providers", "resolve_providers",
           "run_session"]

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INSTALL_CPU = 'pip install "xtm[cpu]"'
INSTALL_GPU = 'pip install "xtm[gpu]"'
# Wheels that install the `onnxruntime` package; any two of them collide.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                         "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-silicon", "onnxruntime-training")
# Providers of a GPU build: asking for one on the CPU build gets the install line for the GPU build.
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
_SUFFIX = "ExecutionProvider"


def installed_runtimes() -> dict[str, str]:
    """{distribution: version} of every ONNX Runtime wheel installed where Python looks (sys.path)."""
    found: dict[str, str] = {}
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def double_install_note(runtimes: dict[str, str] | None = None) -> str | None:
    """What to do when more than one ONNX Runtime wheel is installed; None when at most one is."""
    runtimes = installed_runtimes() if runtimes is None else runtimes
    if len(runtimes) < 2:
        return None
    names = sorted(runtimes)
    listed = " and ".join(f"{n} {runtimes[n]}" for n in names)
    keep = "onnxruntime-gpu" if "onnxruntime-gpu" in runtimes else names[-1]
    return (f"{listed} are both installed; they share the 'onnxruntime' package and overwrite each other's files, "
            f"so what runs is a mix of whichever was installed last. Keep one: pip uninstall -y {' '.join(names)} "
            f"&& pip install {keep} (GPU: {INSTALL_GPU}; CPU only: {INSTALL_CPU})")


def import_onnxruntime() -> Any:
    """`import onnxruntime`, or XtmError saying which install line gives it (or which collision broke it).

    Warns (logger "xtm.runtime.providers") when two ONNX Runtime wheels are installed, once per call."""
    note = double_install_note()
    try:
        import onnxruntime
    except ImportError as e:
        if note is not None:
            raise XtmError(f"onnxruntime does not import ({e}): {note}") from e
        raise XtmError(f"ONNX Runtime is not installed: {INSTALL_CPU} for the CPU, or {INSTALL_GPU} for NVIDIA "
                       "GPUs") from e
    if note is not None:
        logger.warning(note)
    return onnxruntime


def parse_providers(value: str | Sequence[str] | None) -> list[str] | None:
    """`--providers cuda,cpu` (or a list) as a list of names, in order; None stays None (the default)."""
    if value is None:
        return None
    if not isinstance(value, (str, list, tuple)):
        raise XtmError(f"providers: expected 'cuda,cpu' or a list of provider names, got {type(value).__name__}")
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise XtmError(f"providers: expected provider names, got {type(item).__name__}")
        if item.strip():
            names.append(item.strip())
    if not names:
        raise XtmError("providers: give at least one execution provider (e.g. cuda,cpu or cpu)")
    return names


def _full_name(name: str, known: Sequence[str]) -> str | None:
    """`cuda` / `CUDA` / `CUDAExecutionProvider` -> `CUDAExecutionProvider`; None when unknown."""
    want = name.lower()
    if not want.endswith(_SUFFIX.lower()):
        want += _SUFFIX.lower()
    return next((k for k in known if k.lower() == want), None)


def _short(name: str) -> str:
    return name[:-len(_SUFFIX)].lower() if name.endswith(_SUFFIX) else name


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str], known: Sequence[str],
                      runtimes: dict[str, str] | None = None) -> list[str]:
    """The providers to open sessions with, in preference order (onnxruntime's full names).

    requested: names or short names, most preferred first; None: CUDA when this build has it, then
    the CPU. available: what the installed build offers (`onnxruntime.get_available_providers()`);
    known: every provider onnxruntime knows of (`get_all_providers()`), to tell a misspelt name from
    one this build lacks. A provider this build lacks is left out with a warning when the list names one it
    has (`cuda,cpu` on the CPU build: the CPU), and an error when it names none (`cuda` alone).
    runtimes: the installed ONNX Runtime wheels (for the fix in the message).
    """
    if requested is None:
        return ([CUDA] if CUDA in available else []) + [CPU]
    wanted: list[str] = []
    for name in requested:
        full = _full_name(name, [*available, *known])
        if full is None:  # a misspelt name is an error wherever it stands in the list
            raise XtmError(f"execution provider {name!r} is not available: onnxruntime knows no such provider "
                           f"(names such as cuda, cpu, tensorrt, coreml, dml, openvino; this onnxruntime has "
                           f"{', '.join(_short(a) for a in available)})")
        if full not in wanted:
            wanted.append(full)
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if not chosen:  # nothing asked for is here: no fallback was allowed
        raise XtmError(_missing_provider(missing[0], available, runtimes))
    for p in missing:
        logger.warning(f"{_missing_provider(p, available, runtimes)}; left out: running on "
                       f"{', '.join(_short(c) for c in chosen)}, as asked")
    return chosen


def _missing_provider(full: str, available: Sequence[str], runtimes: dict[str, str] | None) -> str:
    runtimes = installed_runtimes() if runtimes is None else runtimes
    msg = f"execution provider {_short(full)} ({full}) is not available in this onnxruntime (it has " \
          f"{', '.join(_short(a) for a in available)})"
    note = double_install_note(runtimes)
    if note is not None:
        return f"{msg}: {note}"
    if full in _GPU_PROVIDERS and "onnxruntime-gpu" not in runtimes:
        installed = ", ".join(f"{n} {v}" for n, v in sorted(runtimes.items())) or "no ONNX Runtime wheel"
        return (f"{msg}; installed: {installed}. The GPU build replaces the CPU one: pip uninstall -y onnxruntime "
                f"&& {INSTALL_GPU}")
    return msg


def check_used(requested: Sequence[str] | None, chosen: Sequence[str], used: Sequence[str], where: str) -> None:
    """Compare the providers a session got (`session.get_providers()`) with the request.

    onnxruntime does not fail when a provider cannot start (CUDA libraries missing, no GPU): it
    logs and runs on the CPU. An explicit request whose first choice did not start is an XtmError
    unless the request itself lists the CPU as a fallback (then a warning); the default request
    (None: CUDA when the build has it) warns. where: the file, for the message."""
    first = chosen[0] if chosen else None
    if first is None or first in used:
        return
    got = ", ".join(used) or "none"
    why = (f"onnxruntime could not start {first} (for CUDA: an NVIDIA driver and the CUDA and cuDNN libraries "
           f"this onnxruntime-gpu release needs; onnxruntime's own log line names what is missing) and runs "
           f"{where} on {got}")
    if requested is not None and CPU not in chosen:
        raise XtmError(f"{why}; ask for a fallback explicitly to accept that: providers {_short(first)},cpu")
    logger.warning(why)


def onnxruntime_error(e: BaseException, what: str, path: Any) -> XtmError:
    """onnxruntime's own exception (its types are not public, not XtmError) as an XtmError saying `what` failed:
    a TransientError when it could not allocate memory (a GPU or host shortage that may pass)."""
    if isinstance(e, MemoryError) or "alloc" in str(e).lower():
        return TransientError(f"{what}: onnxruntime could not allocate memory: {exception_text(e)}", path=path)
    return XtmError(f"{what}: {exception_text(e)}", path=path)


def run_session(run: Any, outputs: list[str], feeds: dict[str, Any], path: Any) -> Any:
    """session.run(outputs, feeds), its failures as `onnxruntime_error`. The feeds are ours, shaped as the graph
    was checked to take at load, so a failure here is the runtime's, not the caller's input."""
    try:
        return run(outputs, feeds)
    except Exception as e:  # onnxruntime's Fail, RuntimeException, InvalidArgument, ...; MemoryError
        raise onnxruntime_error(e, "onnxruntime failed to run the graph", path) from e
