"""`ftserve model-server`: a TensorFlow-Serving-compatible model server for one machine."""
