"""The generated modules of protos/ are committed; regenerating them must change nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"


def proto_files() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def test_there_are_protos_to_check():
    found = proto_files()
    assert "service/model_server/server_config.proto" in found
    assert "service/contract/model_server_config.proto" in found


def test_generated_modules_are_current(tmp_path: Path):
    # The same command as `make protos`, into a scratch folder.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *proto_files(),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "protoc wrote nothing"
    for relative in generated:
        committed = ROOT / relative
        assert committed.is_file(), f"{relative} is not committed: run `make protos`"
        assert committed.read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} is stale: run `make protos`"
        )
