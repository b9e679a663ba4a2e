"""What the exported model costs to call: request size and batch-1 latency, side by side.

1. Request size: a PredictRequest for ``serving_default`` (the JPEG bytes) versus
   ``serving_tensor`` (the same image as float32 pixels).
2. Batch-1 latency on this CPU: onnxruntime on ``model.onnx`` versus the SavedModel's
   ``serving_tensor`` signature (both get the same pixels), plus ``serving_default`` on
   the JPEG bytes (decode and resize included). The three take turns call by call.

The model is MobileNetV2 at 224 px with a 5-class head; random weights cost the same
as trained ones.

    python -m bench.export_serving [--base-model mobilenet_v2] [--runs 100]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import onnxruntime as ort
import tensorflow as tf
from PIL import Image, ImageFilter
from tensorflow_serving.apis import predict_pb2

from bench.report import Measured
from exporter.onnx_export import convert_to_onnx
from exporter.signatures import save_saved_model
from service.contract.train_config import TrainConfig
from service.training.backbones import ResolvedWeights, build_base, get_backbone
from service.training.model import build_classifier
from service.training.preprocessing import decode_and_resize

CLASSES = ("a", "b", "c", "d", "e")


def photo_like_jpeg(size: int, seed: int = 0) -> bytes:
    """A smooth, textured picture: compresses like a photo, unlike noise or flat shapes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(size // 16, size // 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 6, size=(size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).filter(ImageFilter.SMOOTH).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def request_size(name: str, signature: str, key: str, tensor: tf.Tensor) -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(tensor))
    return request.ByteSize()


def percentiles(
    calls: dict[str, Callable[[], object]], runs: int
) -> dict[str, tuple[float, float]]:
    """(p50, p99) ms of each call; the calls take turns, so drifting load hits all alike."""
    for call in calls.values():
        for _ in range(5):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            samples[name].append((time.perf_counter() - started) * 1000)
    found = {}
    for name, times in samples.items():
        times.sort()
        found[name] = (statistics.median(times), times[int(0.99 * (len(times) - 1))])
    return found


def run(base_model: str, size: int, runs: int) -> dict:
    """Export one model, then measure request sizes and batch-1 latencies side by side."""
    backbone = get_backbone(base_model)
    config = TrainConfig(model_name="bench", base_model=base_model, weights="none")
    base = build_base(backbone, size, ResolvedWeights("none"))
    model = build_classifier(backbone, base, len(CLASSES), size, config).model
    jpeg = photo_like_jpeg(size)
    pixels = decode_and_resize(tf.constant(jpeg), size).numpy()[None]

    with tempfile.TemporaryDirectory() as tmp:
        saved = save_saved_model(model, CLASSES, size, Path(tmp) / "1")
        onnx_path = convert_to_onnx(model, size, Path(tmp) / "model.onnx")
        signatures = tf.saved_model.load(str(saved)).signatures
        serve_tensor, serve_bytes = signatures["serving_tensor"], signatures["serving_default"]
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        pixels_tensor, bytes_tensor = tf.constant(pixels), tf.constant([jpeg])
        calls: dict[str, Callable[[], object]] = {
            "onnxruntime (pixels)": lambda: session.run(None, {input_name: pixels}),
            "SavedModel serving_tensor": lambda: serve_tensor(images=pixels_tensor),
            "SavedModel serving_default (JPEG)": lambda: serve_bytes(image_bytes=bytes_tensor),
        }
        timings = percentiles(calls, runs)
    return {
        "model": f"{base_model} at {size}px, {len(CLASSES)} classes, batch 1",
        "runs": runs,
        "request_bytes": {
            "serving_default_jpeg": request_size(
                "bench", "serving_default", "image_bytes", bytes_tensor
            ),
            "serving_tensor_float32": request_size(
                "bench", "serving_tensor", "images", pixels_tensor
            ),
        },
        "latency_ms": {name: {"p50": p50, "p99": p99} for name, (p50, p99) in timings.items()},
    }


def show(found: dict) -> None:
    """Print a run's numbers, with the ratios side by side."""
    sizes, latency = found["request_bytes"], found["latency_ms"]
    as_bytes, as_tensor = sizes["serving_default_jpeg"], sizes["serving_tensor_float32"]
    print(f"model: {found['model']}, {found['runs']} runs, CPU threads {os.cpu_count()}")
    print(
        f"request size: serving_default {as_bytes:,} B (JPEG), serving_tensor "
        f"{as_tensor:,} B (float32); tensor/bytes = {as_tensor / as_bytes:.1f}x"
    )
    for name, p in latency.items():
        print(f"  {name:<36} p50 {p['p50']:8.2f} ms   p99 {p['p99']:8.2f} ms")
    onnx_p50 = latency["onnxruntime (pixels)"]["p50"]
    tf_p50 = latency["SavedModel serving_tensor"]["p50"]
    print(
        f"latency ratio (p50): onnxruntime / SavedModel serving_tensor = {onnx_p50 / tf_p50:.2f}x"
    )


def measure(quick: bool) -> Measured:
    """P6 and P7 on MobileNetV2 at 224 px, as the README reports them."""
    found = run("mobilenet_v2", 224, runs=50 if quick else 100)
    show(found)
    sizes, latency = found["request_bytes"], found["latency_ms"]
    values = {
        "p6_request_size_ratio": sizes["serving_tensor_float32"] / sizes["serving_default_jpeg"],
        "p7_onnx_latency_ratio": latency["onnxruntime (pixels)"]["p50"]
        / latency["SavedModel serving_tensor"]["p50"],
    }
    return Measured(values=dict(values), details=found)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base-model", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    show(run(args.base_model, args.image_size, args.runs))


if __name__ == "__main__":
    main()
