"""The HTTP API (``ftserve api``): FastAPI, no TensorFlow.

``app.create_app`` builds the application; ``routes`` hold thin handlers that call the job
store (``service.jobs``) and the model server client (``service.serving``); ``server.run``
serves it with uvicorn.
"""
