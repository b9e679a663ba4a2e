"""TensorFlow Serving warmup records: real requests replayed when a version loads.

TF Serving reads ``assets.extra/tf_serving_warmup_requests`` (a TFRecord file of
``PredictionLog`` protos) and runs each request before it marks the version available, so
the first user request does not pay for graph initialisation. One request per batch size
we expect (1 and 8) traces both shapes up front.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle, islice
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from service.contract.signatures import BYTES_INPUT, SERVING_DEFAULT

WARMUP_BATCH_SIZES = (1, 8)


def predict_request(model_name: str, images_bytes: Sequence[bytes]) -> predict_pb2.PredictRequest:
    """A ``serving_default`` PredictRequest carrying ``images_bytes`` as ``image_bytes``."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SERVING_DEFAULT
    request.inputs[BYTES_INPUT].CopyFrom(
        tf.make_tensor_proto(list(images_bytes), dtype=tf.string, shape=[len(images_bytes)])
    )
    return request


def write_warmup_requests(path: Path, model_name: str, images_bytes: list[bytes]) -> Path:
    """Write one warmup request per batch size in ``WARMUP_BATCH_SIZES`` to ``path``.

    Images are repeated when there are fewer than a batch needs.

    Returns:
        ``path``.
    """
    if not images_bytes:
        raise ValueError("warmup requests need at least one image")
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch_size in WARMUP_BATCH_SIZES:
            batch = list(islice(cycle(images_bytes), batch_size))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(
                    request=predict_request(model_name, batch)
                )
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: Path) -> list[prediction_log_pb2.PredictionLog]:
    """Parse a warmup file back into its ``PredictionLog`` records, in order."""
    records = []
    for serialized in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(serialized)
        records.append(log)
    return records
