"""TensorFlow's start-up chatter, kept off stderr in every ftserve process.

On a machine without a GPU, ``import tensorflow`` (2.21) and its first use print::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. You may see slightly different ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
    (the same three again: two of its libraries carry their own copy of Abseil)
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...
    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ...

``TF_CPP_MIN_LOG_LEVEL=1`` (unless the user set it) drops TensorFlow's INFO lines; its
warnings and errors still show. The rest is logged while the libraries load, before
TensorFlow has read any setting, or by the CUDA driver's one-time initialisation, which no
setting reaches. So the process's one ``import tensorflow`` runs with file descriptor 2
pointed at a temporary file; on a machine with no GPU device node the import also asks for
the GPUs there, so that CUDA's initialisation fails inside it, once for the process. Then
every line but those known ones is written back, in order. On a machine with a GPU, CUDA's
messages are news and stay.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

# Printed while TensorFlow's libraries load, whatever TF_CPP_MIN_LOG_LEVEL says.
LOAD_NOISE = (
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"oneDNN custom operations are on.",
)
# Printed where CUDA cannot run (at load, and when the GPUs are first listed); news worth
# showing on a machine where it can.
NO_GPU_NOISE = (
    b"Could not find cuda drivers on your machine, GPU will not be used.",
    b"failed call to cuInit",
)
# Device nodes of the GPU drivers TensorFlow could use: NVIDIA, WSL 2's GPU, AMD ROCm.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def install() -> None:
    """Set TF_CPP_MIN_LOG_LEVEL (unless set) and quiet this process's TensorFlow import.

    Does nothing to the import once TensorFlow is loaded; safe to call more than once.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    gpu = has_gpu_device()
    sys.meta_path.insert(0, _QuietImport(LOAD_NOISE if gpu else LOAD_NOISE + NO_GPU_NOISE, gpu))


def has_gpu_device() -> bool:
    """Whether a GPU driver's device node exists, i.e. whether CUDA (or ROCm) could run."""
    return any(Path(node).exists() for node in GPU_DEVICE_NODES)


@contextlib.contextmanager
def stderr_without(noise: Sequence[bytes]) -> Iterator[None]:
    """Within the block, file descriptor 2 goes to a temporary file; afterwards its lines
    that contain none of ``noise`` are written to the real stderr."""
    _flush_python_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush_python_stderr()  # what Python buffered inside belongs to the capture
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture if not any(n in line for n in noise))
            with open(2, "wb", closefd=False) as stderr:
                stderr.write(kept)


def _flush_python_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` like the other finders, with a loader that filters stderr."""

    def __init__(self, noise: Sequence[bytes], gpu: bool) -> None:
        self.noise = noise
        self.gpu = gpu

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader, self)
                return spec
        return None


def _initialise_cuda(tensorflow: ModuleType) -> None:
    """Let CUDA's one-time initialisation fail now, inside the filtered import.

    Listing the physical devices does not create TensorFlow's runtime context, so thread
    and device settings made afterwards still apply.
    """
    # Only cosmetic: whatever goes wrong here goes wrong again, visibly, at first real use.
    with contextlib.suppress(Exception):
        tensorflow.config.list_physical_devices("GPU")


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with stderr filtered, then leaves no trace of itself."""

    def __init__(self, loader: importlib.abc.Loader, finder: _QuietImport) -> None:
        self.loader = loader
        self.finder = finder

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        # One import per process: later imports find the module loaded, or fail unfiltered.
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self.finder)
        with stderr_without(self.finder.noise):
            self.loader.exec_module(module)
            if not self.finder.gpu:
                _initialise_cuda(module)

    def __getattr__(self, name: str) -> Any:
        # Callers of importlib.util.find_spec may use the real loader's other methods.
        if name == "loader":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
