"""The API tier's serving client loads without TensorFlow (the API must start in about a second)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import service.model_client
import service.model_client.client
import service.model_client.codec
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0].startswith("tensorflow"))))
"""


def test_importing_the_client_does_not_import_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
