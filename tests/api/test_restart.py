"""The API is stateless: killed and restarted, it has lost no job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.jobs import JobState
from service.training.sample_data import make_shapes_dataset
from tests.support.servers import ROOT, free_port, tf_python

CONFIG = {"model_name": "shapes", "base_model": "small_cnn", "weights": "none", "epochs": 1}


def environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FTSERVE_DATA_ROOT": str(settings.data_root),
        "FTSERVE_WORK_DIR": str(settings.work_dir),
        "FTSERVE_MODEL_REPO": str(settings.model_repo),
        "FTSERVE_DATABASE_URL": str(settings.database_url),
        "FTSERVE_MODEL_SERVER": f"127.0.0.1:{free_port()}",  # none: not needed here
    }


def start_api(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service.cli", "api", f"--port={port}"]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=environment(settings), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"the API did not start:\n{log.read_text()}")


def test_a_killed_and_restarted_api_has_lost_no_job(settings: Settings, tmp_path: Path):
    settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'jobs.db'}"})
    data = make_shapes_dataset(tmp_path / "shapes", images_per_class=4, image_size=32, seed=1)
    archive = Path(shutil.make_archive(str(tmp_path / "shapes"), "zip", data))
    port, log = free_port(), tmp_path / "api.log"
    api = start_api(settings, port, log)
    with open(archive, "rb") as body:
        accepted = httpx.post(
            f"http://127.0.0.1:{port}/finetune",
            files={"dataset": ("shapes.zip", body, "application/zip")},
            data={"config": json.dumps(CONFIG)},
            timeout=60,
        )
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    api.send_signal(signal.SIGKILL)
    api.wait()

    api = start_api(settings, port, log)
    try:
        again = httpx.get(f"http://127.0.0.1:{port}/finetune/{job_id}", timeout=10)
        assert again.status_code == 200
        assert again.json()["status"] == "queued"
        listed = httpx.get(f"http://127.0.0.1:{port}/finetune", timeout=10).json()
        assert listed["total"] == 1

        # No model server in this test: the worker labels the new version without waiting.
        worker_env = environment(settings)
        del worker_env["FTSERVE_MODEL_SERVER"]
        worker = subprocess.run(
            [tf_python(), "-m", "service.cli", "worker", "--once", "--worker-id=after-restart"],
            env=worker_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert worker.returncode == 0, worker.stderr[-4000:]
        done = httpx.get(f"http://127.0.0.1:{port}/finetune/{job_id}", timeout=10).json()
        assert done["status"] == JobState.SUCCEEDED, done["error"]
        assert done["result"]["version"] == 1
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(60)
