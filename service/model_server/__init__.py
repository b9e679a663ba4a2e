"""`ftserve model-server`: a TensorFlow-Serving-compatible model server for one machine.

Like TensorFlow Serving it reads any base path, so it imports none of training, jobs, the
API, finetune or the exporter.
"""
