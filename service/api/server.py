"""``ftserve api``: serve the API with uvicorn."""

from __future__ import annotations

import uvicorn

from service.api.app import create_app
from service.config import Settings

# On SIGTERM, requests in flight get this long to finish; event streams are then closed.
GRACEFUL_SHUTDOWN_SECONDS = 30


def run(settings: Settings, host: str, port: int) -> int:
    """Serve until SIGINT/SIGTERM, then shut down gracefully.

    After a signal uvicorn re-raises it once shut down, so the process ends as that signal
    says (the supervisor sees a SIGTERM exit). Returns 1 if the server never started (e.g.
    the port is taken or the lifespan failed), else 0.
    """
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        proxy_headers=True,
        server_header=False,
        ws="none",  # no WebSocket routes: skip loading a WebSocket implementation at start
        log_level="info",
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
