"""Untrusted datasets in: archive scanning and extraction, image header checks. TF-free.

The API scans an upload's headers before it queues the job (``scan_archive``); the worker
extracts it with the same per-member rules (``extract_archive``) and training checks each
image's header with the same ``images`` functions before decoding a pixel.
"""
