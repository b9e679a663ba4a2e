from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.publish import publish_result
from service.contract.repository import ModelRepository
from service.errors import ExportError


def test_publish_exports_verifies_and_stamps_the_version_in_the_card(result, tmp_path):
    repository = ModelRepository(tmp_path / "repo")
    (tmp_path / "repo" / "shapes" / "1").mkdir(parents=True)  # an existing version

    published = publish_result(result, repository)

    assert published.version == 2
    assert published.path == tmp_path / "repo" / "shapes" / "2"
    assert published.serving_max_abs_diff <= 1e-5
    card = json.loads((published.path / "assets.extra" / "model_card.json").read_text())
    assert card["version"] == 2
    assert repository.versions("shapes") == [1, 2]
    assert not list((tmp_path / "repo" / "shapes").glob(".staging-*"))


def test_a_model_that_fails_verification_publishes_nothing(result, tmp_path, monkeypatch):
    repository = ModelRepository(tmp_path / "repo")
    original = result.classifier.model.get_weights()
    calls = []

    def perturb_after_export(*args, **kwargs):
        # The in-memory model drifts from what was written: the served copy no longer
        # answers like it, so verification must refuse to publish.
        calls.append(1)
        result.classifier.model.set_weights([w + 0.5 for w in original])
        try:
            return verify(*args, **kwargs)
        finally:
            result.classifier.model.set_weights(original)

    import exporter.publish as publish_module

    verify = publish_module.verify_export
    monkeypatch.setattr(publish_module, "verify_export", perturb_after_export)

    with pytest.raises(ExportError, match="differs from the trained model"):
        publish_result(result, repository)

    assert calls == [1]
    assert repository.versions("shapes") == []
    assert list((tmp_path / "repo" / "shapes").iterdir()) == []
    for now, before in zip(result.classifier.model.get_weights(), original, strict=True):
        np.testing.assert_array_equal(now, before)


def test_the_job_id_in_the_card_finds_the_version_a_job_published(result, tmp_path):
    repository = ModelRepository(tmp_path / "repo")
    first = publish_result(result, repository, job_id="job-a")
    second = publish_result(result, repository, job_id="job-b")

    assert (first.version, second.version) == (1, 2)
    assert repository.find_job_version("shapes", "job-b") == 2
    assert repository.find_job_version("shapes", "job-a") == 1
    assert repository.find_job_version("shapes", "job-c") is None
    card = json.loads((second.path / "assets.extra" / "model_card.json").read_text())
    assert card["job_id"] == "job-b"
