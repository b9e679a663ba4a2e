"""The client side of ``ftserve``: the ``models``, ``jobs`` and ``predict`` commands.

They talk to the API over HTTP (``service.api_client``) and, for ``predict --grpc``, to the
model server through the lean gRPC stubs (``service.model_client``). Nothing here imports
TensorFlow or the API's code, so the client runs wherever Python does.
"""
