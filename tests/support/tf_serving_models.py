"""TensorFlow Serving's own test models, rebuilt here: half plus two and half plus three.

TensorFlow Serving's tests and its Docker quick start serve ``half_plus_two``
(``y = 0.5 * x + 2``) from a zero-padded version folder, ``00000123``. These writers make
models with the same variables, signatures and folder layout, so the same requests can be
sent to ``ftserve model-server`` and to ``tensorflow_model_server``. ``half_plus_three``
is a TF 1.0 export that only a session loader serves.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

VERSION = 123
VERSION_DIR = "00000123"
ASSET_NAME = "foo.txt"
ASSET_TEXT = "asset-file-contents"


def _feature_spec() -> dict[str, tf.io.FixedLenFeature]:
    return {
        "x": tf.io.FixedLenFeature([1], dtype=tf.float32),
        "x2": tf.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
    }


def _write_asset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ASSET_NAME
    path.write_text(ASSET_TEXT)
    return path


class _HalfPlusTwo(tf.Module):
    """``y = a * x + b`` (or ``+ c``), with the signatures of TensorFlow Serving's TF2 model."""

    def __init__(self, asset: Path) -> None:
        super().__init__()
        self.a = tf.Variable(0.5, name="a")
        self.b = tf.Variable(2.0, name="b")
        self.c = tf.Variable(3.0, name="c")
        self.asset = tf.saved_model.Asset(str(asset))

    def _compute(self, x: tf.Tensor, inc: tf.Variable) -> tf.Tensor:
        return tf.add(tf.multiply(self.a, x), inc)

    def _parsed_x(self, serialized: tf.Tensor) -> tf.Tensor:
        return tf.io.parse_example(serialized, _feature_spec())["x"]

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self._compute(x, self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._compute(self._parsed_x(serialized), self.b)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_xy2(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._compute(self._parsed_x(serialized), self.c)}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
    def regress_x2y3(self, x2: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"outputs": self._compute(x2, self.c)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_xy(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self._compute(self._parsed_x(serialized), self.b)}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
    def classify_x2y3(self, x2: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": self._compute(x2, self.c)}


def write_half_plus_two_tf2(base_path: Path) -> Path:
    """A TF2 ``half_plus_two`` SavedModel in ``base_path/00000123``; returns that folder."""
    export_dir = base_path / VERSION_DIR
    model = _HalfPlusTwo(_write_asset(base_path.parent / f"{base_path.name}-assets"))
    signatures = {
        "serving_default": model.predict,
        "regress_x_to_y": model.regress_xy,
        "regress_x_to_y2": model.regress_xy2,
        "regress_x2_to_y3": model.regress_x2y3,
        "classify_x_to_y": model.classify_xy,
        "classify_x2_to_y3": model.classify_x2y3,
    }
    tf.saved_model.save(model, str(export_dir), signatures=signatures)
    return export_dir


def _signature(inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor], method: str):
    info = tf.compat.v1.saved_model.utils.build_tensor_info
    return tf.compat.v1.saved_model.signature_def_utils.build_signature_def(
        {k: info(v) for k, v in inputs.items()}, {k: info(v) for k, v in outputs.items()}, method
    )


def write_half_plus_two_tf1(base_path: Path) -> Path:
    """A TF1 (``SavedModelBuilder``) ``half_plus_two`` in ``base_path/00000123``.

    Like TensorFlow Serving's ``saved_model_half_plus_two_cpu``: a ``tf_example`` placeholder
    parsed into ``x`` and ``x2``, an asset file whose name a main op assigns to a variable,
    and a ``serving_default`` predict signature on ``x`` (``[-1, 1]``) besides the regress
    and classify ones. Returns the version folder.
    """
    v1 = tf.compat.v1
    export_dir = base_path / VERSION_DIR
    asset = _write_asset(base_path.parent / f"{base_path.name}-assets")
    builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as session:
        a, b, c = (v1.Variable(v, name=n) for v, n in [(0.5, "a"), (2.0, "b"), (3.0, "c")])
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        parsed = v1.io.parse_example(serialized, _feature_spec())
        x = tf.identity(parsed["x"], name="x")
        x2 = tf.identity(parsed["x2"], name="x2")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        y3 = tf.identity(a * x2 + c, name="y3")
        asset_path = tf.constant(str(asset))
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_path)
        filename = v1.Variable(ASSET_NAME, name="filename_tensor", trainable=False, collections=[])
        predict, regress, classify = (
            "tensorflow/serving/predict",
            "tensorflow/serving/regress",
            "tensorflow/serving/classify",
        )
        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}, predict),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, regress),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, regress),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, regress),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, classify),
        }
        session.run(v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map=signatures,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(v1.saved_model.main_op.main_op(), filename.assign(ASSET_NAME)),
        )
    builder.save()
    return export_dir


def write_half_plus_three_tf1(base_path: Path) -> Path:
    """Upstream's ``saved_model_half_plus_three`` (``y = 0.5 * x + 3``), as TF 1.0 wrote it.

    Like upstream's checked-in export: the legacy ``ParseExample`` op (with its ``names``
    input) on a ``tf_example`` placeholder whose shape was never set, an asset file, and a
    ``legacy_init_op`` that assigns the asset's name to a variable. TF 1.0 wrote a shapeless
    placeholder as ``shape {}`` in a version-21 GraphDef, which means "unknown" to the
    session loader (as to TensorFlow Serving) but "scalar" to ``tf.saved_model.load``: that
    loader fails on it with ``Shape must be rank 1 but is rank 0 for ParseExample``.
    Returns the version folder (``00000123``).
    """
    v1 = tf.compat.v1
    export_dir = base_path / VERSION_DIR
    asset = _write_asset(base_path.parent / f"{base_path.name}-assets")
    builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as session:
        a, b, c = (v1.Variable(v, name=n) for v, n in [(0.5, "a"), (3.0, "b"), (4.0, "c")])
        serialized = v1.placeholder(tf.string, name="tf_example")
        spec = _feature_spec()
        x_parsed, x2_parsed = tf.raw_ops.ParseExample(
            serialized=serialized,
            names=tf.constant([], tf.string),
            sparse_keys=[],
            dense_keys=[tf.constant(key) for key in spec],
            dense_defaults=[tf.constant([], tf.float32), tf.constant([0.0])],
            sparse_types=[],
            dense_shapes=[feature.shape for feature in spec.values()],
        ).dense_values
        x = tf.identity(x_parsed, name="x")
        x2 = tf.identity(x2_parsed, name="x2")
        y = tf.identity(a * x + b, name="y")
        y2 = tf.identity(a * x + c, name="y2")
        y3 = tf.identity(a * x2 + c, name="y3")
        asset_path = tf.constant(str(asset))
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_path)
        filename = v1.Variable(ASSET_NAME, name="filename_tensor", trainable=False, collections=[])
        v1.add_to_collection("legacy_init_op", tf.group(filename.assign(ASSET_NAME)))
        predict, regress, classify = (
            "tensorflow/serving/predict",
            "tensorflow/serving/regress",
            "tensorflow/serving/classify",
        )
        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}, predict),
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, regress),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, regress),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, regress),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, classify),
        }
        session.run(v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map=signatures,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
        )
    builder.save()
    _as_tf_1_0_wrote_it(export_dir / "saved_model.pb")
    return export_dir


def _as_tf_1_0_wrote_it(saved_model_pb: Path) -> None:
    """Rewrite shapeless placeholders the way TF 1.0 encoded them, in a version-21 GraphDef."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(saved_model_pb.read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    graph.versions.producer = 21
    for node in graph.node:
        if node.op == "Placeholder" and node.attr["shape"].shape.unknown_rank:
            node.attr["shape"].shape.Clear()
    saved_model_pb.write_bytes(saved_model.SerializeToString())
