"""ftserve: fine-tune a pretrained Keras backbone on your images, serve it over gRPC."""

from service import quiet_tensorflow as _quiet_tensorflow

__version__ = "0.1.0"

# TensorFlow reads its log settings as its libraries load, so they must be in place before
# any module imports it. Every ftserve process (train, worker, model-server, serve and its
# children) imports this package first: it is the one place early enough. The module it
# calls imports nothing heavy, so the API tier stays free of TensorFlow.
_quiet_tensorflow.install()
