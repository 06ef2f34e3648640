"""Run the app under uvicorn, in the foreground or on a background thread."""

import threading
import time

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from api.app import create_app
from etl.db import Databases, for_requests


def make_server(dbs: Databases, host: str, port: int, log_level: str = "info") -> uvicorn.Server:
    # With USAGE_LOG_FORMAT, uvicorn's events go to the handler `etl.logs` set up, as the
    # commands' do; without it, uvicorn prints its own lines for a person.
    log_config = None if dbs.settings.log_format else LOGGING_CONFIG
    config = uvicorn.Config(
        create_app(dbs),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        log_config=log_config,
    )
    return uvicorn.Server(config)


def serve_forever(dbs: Databases, host: str, port: int) -> None:
    with for_requests(dbs) as reading:
        make_server(reading, host, port).run()


def start_in_thread(server: uvicorn.Server, timeout: float = 10.0) -> threading.Thread:
    """Start `server` on a daemon thread and wait until it accepts connections."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    return thread
