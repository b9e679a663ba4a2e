"""The API tier's way to the model server: gRPC with lean, TensorFlow-free stubs.

``client.PredictClient`` calls TensorFlow Serving's PredictionService and ModelService;
``codec`` turns tensors into numpy arrays and back. The ``*_pb2`` modules are generated from
``protos/service/model_client/`` (``make protos``) and are wire-compatible with
``tensorflow-serving-api``'s messages.
"""

from service.model_client.client import (
    PredictClient,
    PredictResult,
    PredictTensors,
    VersionStatus,
)

__all__ = ["PredictClient", "PredictResult", "PredictTensors", "VersionStatus"]
