"""llama.cpp as a test oracle: its Python binding in a venv of its own (never a lowbit
dependency; .ci/run builds it, LOWBIT_LLAMACPP_PYTHON names its interpreter). Tests that need it
are skipped when it is absent."""
import json
import os
import subprocess
from pathlib import Path

import pytest

PEER = Path(os.environ.get("LOWBIT_LLAMACPP_PYTHON", "/work/peers/venv-llamacpp/bin/python"))
RUNNER = Path(__file__).resolve().parents[1] / "bench" / "llamacpp_run.py"
needs_llamacpp = pytest.mark.skipif(not PEER.is_file(), reason=f"llama.cpp peer venv not found ({PEER}): "
                                    "build it with pip install llama-cpp-python into that venv")


def run_peer(req: dict) -> dict:
    r = subprocess.run([str(PEER), str(RUNNER)], input=json.dumps(req), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def installed_llama_cpp_lib() -> Path | None:
    """libggml-base of the llama.cpp peer venv (llama-cpp-python built from source), if any:
    its ggml_quantize_chunk is llama.cpp's own C quantizer."""
    found = sorted(PEER.parent.parent.glob("lib/python3*/site-packages/llama_cpp/lib/libggml-base.so"))
    return found[0] if found else None
