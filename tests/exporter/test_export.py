"""One small model, trained and exported once per module, checked from every side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

from exporter.export import (
    ExportReport,
    decode_batch,
    export_model,
    verify_export,
)
from exporter.onnx_export import ONNX_OPSET, check_parity, compute_dtypes, export_onnx
from exporter.signatures import save_saved_model
from exporter.warmup import read_warmup_requests
from service.contract.repository import (
    ASSETS_EXTRA,
    LABELS_FILE,
    MODEL_CARD_FILE,
    ONNX_FILE,
    WARMUP_FILE,
)
from service.contract.train_config import TrainConfig
from service.errors import ExportError
from service.training.backbones import (
    BackbonePreprocessing,
    ResolvedWeights,
    build_base,
    get_backbone,
)
from service.training.model import build_classifier
from service.training.runtime import dtype_policy
from service.training.sample_data import make_shapes_dataset
from service.training.trainer import TrainingResult

IMAGE_SIZE = 32
OUTPUT_KEYS = {"probabilities", "labels", "label_scores"}


@pytest.fixture(scope="module")
def report(result: TrainingResult, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    out_dir = tmp_path_factory.mktemp("export") / "staging"
    return export_model(result, "shapes", out_dir, version=3)


@pytest.fixture(scope="module")
def served(report: ExportReport):
    return tf.saved_model.load(str(report.saved_model_path))


@pytest.fixture(scope="module")
def fresh_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images the model never saw: PNG and JPEG of every class."""
    root = tmp_path_factory.mktemp("fresh") / "shapes"
    make_shapes_dataset(root, images_per_class=2, image_size=48, seed=11)
    return sorted(root.rglob("*.*"))


def _as_numpy(outputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in outputs.items()}


def _check_outputs(outputs: dict[str, np.ndarray], batch: int, classes: tuple[str, ...]) -> None:
    k = min(5, len(classes))
    assert set(outputs) == OUTPUT_KEYS
    probabilities, labels, scores = (
        outputs[key] for key in ("probabilities", "labels", "label_scores")
    )
    assert probabilities.dtype == np.float32 and probabilities.shape == (batch, len(classes))
    assert labels.dtype == object and labels.shape == (batch, k)
    assert scores.dtype == np.float32 and scores.shape == (batch, k)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_array_equal(scores, np.take_along_axis(probabilities, order, axis=1))
    named = np.vectorize(lambda i: classes[i].encode())(order)
    np.testing.assert_array_equal(labels, named)


def test_serving_default_answers_probabilities_and_top_labels(served, result, fresh_files):
    images_bytes = [path.read_bytes() for path in fresh_files]

    outputs = _as_numpy(served.signatures["serving_default"](image_bytes=tf.constant(images_bytes)))

    _check_outputs(outputs, len(images_bytes), result.classes)


def test_serving_tensor_answers_like_serving_default(served, result, fresh_files):
    images_bytes = [path.read_bytes() for path in fresh_files]
    pixels = decode_batch(images_bytes, IMAGE_SIZE)

    from_pixels = _as_numpy(served.signatures["serving_tensor"](images=tf.constant(pixels)))
    from_bytes = _as_numpy(
        served.signatures["serving_default"](image_bytes=tf.constant(images_bytes))
    )

    _check_outputs(from_pixels, len(pixels), result.classes)
    np.testing.assert_allclose(from_pixels["probabilities"], from_bytes["probabilities"], atol=1e-6)


def test_signature_inputs_have_the_contract_names(served):
    _, bytes_inputs = served.signatures["serving_default"].structured_input_signature
    _, tensor_inputs = served.signatures["serving_tensor"].structured_input_signature

    assert bytes_inputs == {"image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")}
    assert tensor_inputs == {
        "images": tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="images")
    }


def test_serving_default_on_jpeg_and_png_matches_the_model_on_decoded_pixels(
    served, result, fresh_files
):
    assert {path.suffix for path in fresh_files} == {".jpg", ".png"}
    images_bytes = [path.read_bytes() for path in fresh_files]

    outputs = served.signatures["serving_default"](image_bytes=tf.constant(images_bytes))

    expected = result.classifier.model(decode_batch(images_bytes, IMAGE_SIZE), training=False)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), np.asarray(expected), atol=1e-5)


def test_serving_default_rejects_bytes_that_are_not_an_image(served, fresh_files):
    batch = tf.constant([fresh_files[0].read_bytes(), b"certainly not an image"])

    with pytest.raises(tf.errors.InvalidArgumentError):
        served.signatures["serving_default"](image_bytes=batch)


def test_onnx_matches_keras_on_fresh_images_and_the_card_records_the_export_parity(
    report, result, fresh_files
):
    pixels = decode_batch([path.read_bytes() for path in fresh_files], IMAGE_SIZE)

    difference = check_parity(report.onnx_path, result.classifier.model, pixels)

    assert difference <= 1e-4
    assert 0.0 <= report.onnx_max_abs_diff <= 1e-4
    assert report.card["onnx"]["max_abs_diff"] == report.onnx_max_abs_diff
    assert report.card["onnx"]["opset"] == ONNX_OPSET
    graph = onnx.load(str(report.onnx_path))
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["probabilities"]
    assert {o.domain: o.version for o in graph.opset_import}[""] == ONNX_OPSET


def test_warmup_requests_replay_against_the_saved_model(report, served, result):
    records = read_warmup_requests(report.saved_model_path / ASSETS_EXTRA / WARMUP_FILE)

    sizes = []
    for record in records:
        request = record.predict_log.request
        assert request.model_spec.name == "shapes"
        assert request.model_spec.signature_name == "serving_default"
        images_bytes = tf.make_ndarray(request.inputs["image_bytes"])
        outputs = served.signatures["serving_default"](image_bytes=tf.constant(images_bytes))
        _check_outputs(_as_numpy(outputs), len(images_bytes), result.classes)
        sizes.append(len(images_bytes))
    assert sizes == [1, 8]


def test_model_card_holds_every_field(report, result):
    card = json.loads((report.saved_model_path / ASSETS_EXTRA / MODEL_CARD_FILE).read_text())

    assert card == report.card
    assert card["name"] == "shapes" and card["version"] == 3
    assert card["created"].endswith("+00:00")
    assert card["classes"] == ["circle", "square", "triangle"]
    assert card["backbone"] == "small_cnn"
    assert card["weights"] == {"source": "none", "file": None, "sha256": None}
    assert card["image_size"] == IMAGE_SIZE and card["preprocessing"] == "unit"
    assert card["hyperparameters"] == result.config.model_dump(mode="json")
    assert card["dataset"]["fingerprint"] == result.dataset.fingerprint
    assert card["dataset"]["class_counts"] == {"circle": 8, "square": 8, "triangle": 8}
    assert card["dataset"]["split"] == result.split
    assert set(card["evaluation"]["per_class"]) == set(result.classes)
    assert np.asarray(card["evaluation"]["confusion_matrix"]).shape == (3, 3)
    assert card["evaluation"]["accuracy"] == result.evaluation["accuracy"]
    assert card["onnx"]["images"] == result.split["validation"]
    assert set(card["libraries"]) >= {
        "python",
        "tensorflow",
        "keras",
        "onnx",
        "onnxruntime",
        "tf2onnx",
    }
    assert card["libraries"]["tensorflow"] == tf.__version__
    assert card["signatures"]["serving_default"] == {
        "inputs": {"image_bytes": {"dtype": "string", "shape": [-1]}},
        "outputs": {
            "label_scores": {"dtype": "float32", "shape": [-1, 3]},
            "labels": {"dtype": "string", "shape": [-1, 3]},
            "probabilities": {"dtype": "float32", "shape": [-1, 3]},
        },
    }
    assert card["signatures"]["serving_tensor"]["inputs"] == {
        "images": {"dtype": "float32", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}
    }


def test_labels_file_lists_the_classes_in_training_order(report):
    expected = "circle\nsquare\ntriangle\n"

    assert (report.saved_model_path / ASSETS_EXTRA / LABELS_FILE).read_text() == expected
    assert (report.saved_model_path / "assets" / LABELS_FILE).read_text() == expected


def test_verify_export_accepts_the_model_it_was_exported_from(report, result, fresh_files):
    images_bytes = [path.read_bytes() for path in fresh_files]

    assert verify_export(report.saved_model_path, result.classifier.model, images_bytes) <= 1e-5


def _perturbed_copy(model: keras.Model) -> keras.Model:
    copy = keras.models.clone_model(model)
    rng = np.random.default_rng(0)
    copy.set_weights(
        [w + rng.normal(0.0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    return copy


def test_verify_export_rejects_a_different_model(report, result, fresh_files):
    images_bytes = [path.read_bytes() for path in fresh_files]
    other = _perturbed_copy(result.classifier.model)
    assert any(
        isinstance(layer, BackbonePreprocessing) for layer in other.get_layer("features").layers
    )

    with pytest.raises(ExportError, match="differs from the trained model"):
        verify_export(report.saved_model_path, other, images_bytes)


def test_verify_export_rejects_a_version_missing_its_onnx_file(report, result, tmp_path):
    copy = shutil.copytree(report.saved_model_path, tmp_path / "copy")
    (copy / ASSETS_EXTRA / ONNX_FILE).unlink()

    with pytest.raises(ExportError, match=r"model\.onnx"):
        verify_export(copy, result.classifier.model, [b"unused"])


def test_export_refuses_a_folder_that_is_not_empty(result, tmp_path):
    (tmp_path / "leftover").write_text("from an earlier try")

    with pytest.raises(ExportError, match="not empty"):
        export_model(result, "shapes", tmp_path)


def _untrained_classifier(precision: str) -> keras.Model:
    backbone = get_backbone("small_cnn")
    config = TrainConfig(model_name="mixed", base_model="small_cnn", weights="none")
    with dtype_policy(precision):
        base = build_base(backbone, IMAGE_SIZE, ResolvedWeights("none"))
        return build_classifier(backbone, base, 3, IMAGE_SIZE, config).model


_LOW_PRECISION = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_models_export_a_float32_onnx_graph_within_tolerance(
    precision, fresh_files, tmp_path
):
    model = _untrained_classifier(precision)
    assert compute_dtypes(model) > {"float32"}
    pixels = decode_batch([path.read_bytes() for path in fresh_files], IMAGE_SIZE)

    difference = export_onnx(model, IMAGE_SIZE, tmp_path / ONNX_FILE, pixels)

    assert difference <= 1e-4
    graph = onnx.load(str(tmp_path / ONNX_FILE)).graph
    assert not {t.data_type for t in graph.initializer} & _LOW_PRECISION
    casts = {a.i for n in graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    assert not casts & _LOW_PRECISION
    assert compute_dtypes(model) > {"float32"}  # the served model keeps its precision


def test_verify_export_accepts_a_mixed_precision_model_it_was_saved_from(fresh_files, tmp_path):
    model = _untrained_classifier("mixed_float16")
    save_saved_model(model, ("circle", "square", "triangle"), IMAGE_SIZE, tmp_path)
    (tmp_path / ASSETS_EXTRA).mkdir()
    for name in (ONNX_FILE, MODEL_CARD_FILE, LABELS_FILE, WARMUP_FILE):
        (tmp_path / ASSETS_EXTRA / name).write_bytes(b"")

    images_bytes = [path.read_bytes() for path in fresh_files]
    assert verify_export(tmp_path, model, images_bytes) <= 1e-5
