"""The HTTP API (``ftserve api``): FastAPI, no TensorFlow.

``app.create_app`` builds the application; ``routes/<name>.py`` hold thin handlers and
``<name>.py`` beside this file their logic (``finetune``, ``predict``, ``models``), which
calls the job store (``service.jobs``), the repository contract (``service.contract``), the
upload checks (``service.ingest``) and the model server client (``service.model_client``);
``server.run`` serves it with uvicorn. It imports none of training, finetune, exporter or
model_server, and nothing but the CLI imports it (``tests/test_architecture.py``).
"""
