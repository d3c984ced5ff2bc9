"""The API never imports model code: its image installs no torch, llama.cpp or CTranslate2."""

from __future__ import annotations

import subprocess
import sys

from tests.stack import ROOT


def test_the_api_imports_no_model_library() -> None:
    probe = (
        "import sys; from api.app import create_app; from config import Settings; "
        "create_app(Settings(redis_url='redis://127.0.0.1:1')); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'llama_cpp', 'torch', 'ctranslate2', 'faster_whisper', 'hibari', 'piper', 'onnxruntime', "
        "'workers', 'numpy'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
