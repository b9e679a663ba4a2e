"""Where training runs: devices, numeric precision, XLA and the distribution strategy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from service.contract.train_config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    gpus: int
    precision: str
    jit_compile: bool
    strategy: tf.distribute.Strategy = field(default_factory=tf.distribute.get_strategy)

    def describe(self) -> dict[str, object]:
        return {
            "gpus": self.gpus,
            "precision": self.precision,
            "xla": self.jit_compile,
            "strategy": type(self.strategy).__name__,
            "replicas": self.strategy.num_replicas_in_sync,
        }


def resolve_runtime(config: TrainConfig) -> Runtime:
    """Pick settings for the visible accelerators; ``auto`` means fast on GPU, exact on CPU."""
    gpus = len(tf.config.list_logical_devices("GPU"))
    precision = config.precision
    if precision == "auto":
        precision = "mixed_float16" if gpus else "float32"
    jit = config.xla == "on" or (config.xla == "auto" and gpus > 0)
    if gpus > 1:
        # Several GPUs: replicate the model and split every batch between them.
        return Runtime(gpus, precision, jit, tf.distribute.MirroredStrategy())
    if gpus == 1:
        # One GPU: this strategy prefetches each input batch onto the device, so the
        # host-to-device copy overlaps the previous step.
        return Runtime(gpus, precision, jit, tf.distribute.OneDeviceStrategy("/gpu:0"))
    return Runtime(gpus, precision, jit)


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under a dtype policy without leaking it to the rest of the process."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
