"""TensorFlow Serving's own test models, rebuilt here: half plus two, half plus three, exports.

TensorFlow Serving's tests and its Docker quick start serve ``half_plus_two``
(``y = 0.5 * x + 2``) from a zero-padded version folder, ``00000123``. These writers make
models with the same variables, signatures and folder layout, so the same requests can be
sent to ``ftserve model-server`` and to ``tensorflow_model_server``. ``half_plus_three``
is a TF 1.0 export that only a session loader serves. ``write_upstream_exports`` writes the
models upstream's server test exports itself with ``tf.saved_model.save`` and Keras.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests.support.servers import ROOT

VERSION = 123
VERSION_DIR = "00000123"
ASSET_NAME = "foo.txt"
ASSET_TEXT = "asset-file-contents"
# The models upstream's test exports, by the names it serves them under.
SAVED = "tf_saved_model_save"
SAVED_TWO_SIGNATURES = "tf_saved_model_save_multiple_signatures"
KERAS = "sequential_keras_saved_model_save"
KERAS_MIRRORED = "distrat_sequential_keras_saved_model_save"
SERVING_DEFAULT = "serving_default"
CUSTOM_SIGNATURE = "custom_signature_key"


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
    return _write_tf1_half_plus(base_path, b=2.0, c=3.0, as_tf_1_0=False)


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
    export_dir = _write_tf1_half_plus(base_path, b=3.0, c=4.0, as_tf_1_0=True)
    _as_tf_1_0_wrote_it(export_dir / "saved_model.pb")
    return export_dir


def _write_tf1_half_plus(base_path: Path, b: float, c: float, as_tf_1_0: bool) -> Path:
    """``y = 0.5 * x + b``, ``y2 = 0.5 * x + c``, ``y3 = 0.5 * x2 + c`` with upstream's signatures.

    ``as_tf_1_0``: the graph of upstream's TF 1.0 export (legacy ``ParseExample``, a shapeless
    placeholder, a ``legacy_init_op``) instead of the later one (a main op).
    """
    v1 = tf.compat.v1
    export_dir = base_path / VERSION_DIR
    asset = _write_asset(base_path.parent / f"{base_path.name}-assets")
    builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as session:
        a, b_var, c_var = (v1.Variable(v, name=n) for v, n in [(0.5, "a"), (b, "b"), (c, "c")])
        if as_tf_1_0:
            serialized = v1.placeholder(tf.string, name="tf_example")
            x_parsed, x2_parsed = _legacy_parse_example(serialized)
        else:
            serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
            parsed = v1.io.parse_example(serialized, _feature_spec())
            x_parsed, x2_parsed = parsed["x"], parsed["x2"]
        x = tf.identity(x_parsed, name="x")
        x2 = tf.identity(x2_parsed, name="x2")
        outputs = {
            "y": tf.identity(a * x + b_var, name="y"),
            "y2": tf.identity(a * x + c_var, name="y2"),
            "y3": tf.identity(a * x2 + c_var, name="y3"),
        }
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, tf.constant(str(asset)))
        filename = v1.Variable(ASSET_NAME, name="filename_tensor", trainable=False, collections=[])
        session.run(v1.global_variables_initializer())
        main_op = None
        if as_tf_1_0:  # TF 1.0 had no main op: a legacy_init_op assigned the asset's name
            v1.add_to_collection("legacy_init_op", tf.group(filename.assign(ASSET_NAME)))
        else:
            main_op = tf.group(v1.saved_model.main_op.main_op(), filename.assign(ASSET_NAME))
        builder.add_meta_graph_and_variables(
            session,
            ["serve"],
            signature_def_map=_tf1_signatures(serialized, x, x2, outputs),
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=main_op,
        )
    builder.save()
    return export_dir


def _legacy_parse_example(serialized: tf.Tensor) -> list[tf.Tensor]:
    """``x`` and ``x2`` parsed by the ``ParseExample`` op TF 1.0 used, ``names`` input included."""
    spec = _feature_spec()
    return tf.raw_ops.ParseExample(
        serialized=serialized,
        names=tf.constant([], tf.string),
        sparse_keys=[],
        dense_keys=[tf.constant(key) for key in spec],
        dense_defaults=[tf.constant([], tf.float32), tf.constant([0.0])],
        sparse_types=[],
        dense_shapes=[feature.shape for feature in spec.values()],
    ).dense_values


def _tf1_signatures(serialized: tf.Tensor, x: tf.Tensor, x2: tf.Tensor, outputs: dict) -> dict:
    predict, regress, classify = (
        "tensorflow/serving/predict",
        "tensorflow/serving/regress",
        "tensorflow/serving/classify",
    )
    y, y2, y3 = outputs["y"], outputs["y2"], outputs["y3"]
    return {
        "serving_default": _signature({"x": x}, {"y": y}, predict),
        "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, regress),
        "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, regress),
        "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, regress),
        "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, classify),
    }


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


# -- the models upstream's tests export themselves -------------------------------------------


def write_upstream_exports(root: Path) -> dict[str, Path]:
    """Upstream's four exported models under ``root``: their base paths by model name.

    The mirrored Keras model needs a fresh interpreter; the others are written meanwhile.
    """
    paths = {name: root / name for name in (SAVED, SAVED_TWO_SIGNATURES, KERAS, KERAS_MIRRORED)}
    log = root / f"{KERAS_MIRRORED}.log"
    mirrored = _start_mirrored_keras(paths[KERAS_MIRRORED], log)
    try:
        write_checkpoint_root(paths[SAVED])
        write_two_signatures(paths[SAVED_TWO_SIGNATURES])
        save_keras(sequential(with_dense=False), paths[KERAS])
        mirrored.wait(timeout=600)
    finally:
        if mirrored.poll() is None:
            mirrored.kill()
            mirrored.wait()
    assert mirrored.returncode == 0, log.read_text(errors="replace")[-4000:]
    return paths


def write_checkpoint_root(base_path: Path) -> None:
    """test_tf_saved_model_save: ``y = v1 * v2 * x`` on a ``tf.train.Checkpoint`` root."""
    root = tf.train.Checkpoint()
    root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    signature = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(root, str(base_path / VERSION_DIR), signatures=signature)


def write_two_signatures(base_path: Path) -> None:
    """test_tf_saved_model_save_multiple_signatures: ``y`` is 1 by default, 2 by the other."""
    any_x = [tf.TensorSpec(None, tf.float32)]
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=any_x)
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=any_x)
    signatures = {SERVING_DEFAULT: root.f, CUSTOM_SIGNATURE: root.g}
    tf.saved_model.save(root, str(base_path / VERSION_DIR), signatures=signatures)


def sequential(with_dense: bool) -> tf.keras.Model:
    """Input ``x``, an optional ``Dense(1)`` with weight 1 and bias 0, identity ``y``."""
    model = tf.keras.Sequential([tf.keras.layers.Input(shape=(1,), dtype="float32", name="x")])
    if with_dense:
        model.add(tf.keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"))
    model.add(tf.keras.layers.Lambda(lambda x: x, name="y"))
    return model


def save_keras(model: tf.keras.Model, base_path: Path) -> None:
    # Keras 2, which upstream ran, named the default signature's tensors after the Input and
    # the last layer (``x``, ``y``); Keras 3 names them ``inputs`` and ``output_0``. The
    # explicit signature gives the SavedModel the names upstream's request uses.
    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": model(x)}

    tf.saved_model.save(model, str(base_path / VERSION_DIR), signatures=serve)


def write_mirrored_keras(base_path: Path) -> None:
    """test_distrat_sequential_keras_saved_model_save: built under a two-CPU MirroredStrategy.

    Splitting the CPU into two logical devices must happen before TensorFlow's runtime
    starts, so this runs in a fresh interpreter (``_start_mirrored_keras``).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    with tf.distribute.MirroredStrategy(devices=["/cpu:0", "/cpu:1"]).scope():
        model = sequential(with_dense=True)
    save_keras(model, base_path)


def _start_mirrored_keras(base_path: Path, log: Path) -> subprocess.Popen[bytes]:
    code = (
        f"import sys, pathlib; from {__name__} import write_mirrored_keras;"
        " write_mirrored_keras(pathlib.Path(sys.argv[1]))"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as output:  # the child keeps its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-c", code, str(base_path)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
