from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

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


def test_the_published_version_keeps_thumbnails_of_its_mistakes(result, tmp_path):
    repository = ModelRepository(tmp_path / "repo")

    published = publish_result(result, repository)

    folder = published.path / "assets.extra" / "misclassified"
    index = json.loads((folder / "index.json").read_text())
    confusion = np.asarray(result.evaluation["confusion_matrix"])
    total = int(confusion.sum() - np.trace(confusion))
    assert total > 0  # the session's model is barely trained: it gets some wrong
    assert index["total"] == total
    items = index["items"]
    per_class = Counter(item["true_label"] for item in items)
    assert len(items) == sum(min(8, n) for n in confusion.sum(axis=1) - np.diag(confusion))
    assert max(per_class.values()) <= 8
    assert [item["score"] for item in items] == sorted((i["score"] for i in items), reverse=True)
    for item in items:
        assert item["true_label"] in result.classes and item["predicted_label"] in result.classes
        assert item["true_label"] != item["predicted_label"]
        assert 0 < item["score"] <= 1
        with Image.open(folder / item["file"]) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
            assert max(image.size) <= 128
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(item["file"] for item in items), "index.json"]
    )
    card = json.loads((published.path / "assets.extra" / "model_card.json").read_text())
    assert card["misclassified"] == {
        "total": total,
        "thumbnails": len(items),
        "skipped": 0,
        "limit_per_class": 8,
        "max_side": 128,
    }
