"""Turns a trained classifier into a versioned, servable model (SavedModel + ONNX)."""
