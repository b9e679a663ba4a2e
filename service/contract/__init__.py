"""What every tier agrees on, importable without TensorFlow, Keras or tensorflow_serving.

- ``names``: the model-name rule.
- ``signatures``: the exported signatures' names, inputs and outputs.
- ``train_config``: ``TrainConfig``, the per-job training options.
- ``repository``: the model repository layout, versions, publishing and ``models.config``.
- ``validation``: pydantic errors turned into one readable line.

Imports here go only to the standard library, pydantic, protobuf, ``service.errors`` and
``service.config``; the import-rule test (``tests/test_architecture.py``) enforces it.
"""
