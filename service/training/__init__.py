"""Transfer learning with Keras: dataset index, tf.data pipeline, backbones, two phases.

The core of the project: it knows nothing of exporting, jobs or HTTP (``service.finetune``
ties those together). ``preprocessing`` is the decode contract the exported model reuses.
"""
