"""TensorFlow's start-up chatter stays off stderr; everything else written there stays on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.quiet_tensorflow import has_gpu_device, stderr_without

REPO = Path(__file__).resolve().parents[1]
NOISE = ("cuda", "cudnn", "cufft", "cublas", "tf-trt", "absl::initializelog", "onednn custom")


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, without TensorFlow's log and oneDNN variables
    unless given."""
    child = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TF_CPP_") and k != "TF_ENABLE_ONEDNN_OPTS"
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**child, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_filtered_block_drops_the_noise_and_keeps_the_rest_in_order():
    # Python's stderr holds "zero " in its buffer: it must come out first, not last.
    result = python(
        "import os, sys\n"
        "from service.quiet_tensorflow import stderr_without\n"
        "sys.stderr.write('zero ')\n"
        "with stderr_without([b'chatter']):\n"
        "    os.write(2, b'first\\nsome chatter here\\n')\n"
        "    sys.stderr.write('second ')\n"
        "    os.write(2, b'third, no newline')\n"
        "sys.stderr.write(' fourth')\n"
    )

    assert result.stderr == "zero first\nsecond third, no newline fourth"


def test_filtered_block_restores_stderr_when_it_raises(capfd):
    with pytest.raises(RuntimeError), stderr_without([b"chatter"]):
        os.write(2, b"kept\nchatter\n")
        raise RuntimeError("boom")
    os.write(2, b"after\n")

    assert capfd.readouterr().err == "kept\nafter\n"


@pytest.mark.skipif(has_gpu_device(), reason="CUDA's messages are news on a machine with a GPU")
def test_importing_tensorflow_after_service_prints_nothing():
    result = python(
        "import service, os, tensorflow as tf, warnings\n"
        "tf.config.list_physical_devices()\n"
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], type(tf.__spec__.loader).__name__)\n"
        "warnings.warn('our own warning')\n"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "1 SourceFileLoader\n"  # TensorFlow's loader, not a wrapper
    noisy = [line for line in result.stderr.splitlines() if any(n in line.lower() for n in NOISE)]
    assert noisy == []
    assert "UserWarning: our own warning" in result.stderr


def test_a_log_level_the_user_set_is_kept():
    result = python(
        "import service, os; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])", TF_CPP_MIN_LOG_LEVEL="0"
    )

    assert result.stdout == "0\n"


def test_without_the_hook_tensorflow_is_noisy_here():
    """The noise the hook removes is real on this machine (else the test above proves little)."""
    if has_gpu_device():
        pytest.skip("this machine has a GPU: TensorFlow's CPU-only messages do not appear")
    result = python("import tensorflow as tf; tf.config.list_physical_devices()")

    assert result.returncode == 0, result.stderr
    assert "oneDNN custom operations are on" in result.stderr
    assert "absl::InitializeLog()" in result.stderr
