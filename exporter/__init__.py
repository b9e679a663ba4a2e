"""Turns a trained classifier into a versioned, servable model (SavedModel + ONNX).

It reads the training result and the decode contract (``service.training``) and writes the
layout ``service.contract.repository`` defines; it never imports the API, the job store or
the fine-tuning jobs above it.
"""
