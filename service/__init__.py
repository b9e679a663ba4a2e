"""ftserve: fine-tune a pretrained Keras backbone on your images, serve it over gRPC."""

__version__ = "0.1.0"
