"""Start the chat service: `python start_server.py [--host H] [--port P] [--workers N]`.

With no REDIS_URL it first starts an embedded Redis (data kept under DATA_DIR), shared by
all workers and stopped on exit; with no model configured, each worker serves the built-in
offline demo model. SIGTERM or Ctrl+C shut down gracefully: running answers end with a
`server_shutdown` event, then the server exits.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.config
import os
import resource
import signal
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from config import Settings, private_directory
from personachat.embedded_redis import EmbeddedRedis
from personachat.personas import PersonaFileError, load_catalog
from personachat.web.server import server_options


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description="Run the persona chat service.")
    parser.add_argument("--host", default=settings.host, help="address to listen on (HOST, default %(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="port (PORT, default %(default)s)")
    parser.add_argument("--workers", type=int, default=settings.workers, help="worker processes (WORKERS)")
    args = parser.parse_args(argv)
    if args.workers > 1:
        _prepare_multiprocess_metrics(settings.data_dir)
    from personachat.logs import logging_config  # after the line above: it imports prometheus-client

    log_config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)

    try:
        load_catalog(settings.roles_file, settings.default_role)
    except PersonaFileError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    # Made once here, so that every worker signs cookies with the same key.
    os.environ.setdefault("SECRET_KEY", settings.resolved_secret_key())
    os.environ["HOST"] = args.host  # a --host given here is a Host the app answers for (ALLOWED_HOSTS)

    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        embedded.start()
        os.environ["REDIS_URL"] = embedded.url  # the workers use it like any configured Redis
        print(f"embedded Redis: {embedded.url} (data in {embedded.directory})", file=sys.stderr)
    if settings.uses_demo_model:
        print("no model configured: the offline demo model answers (set OPENAI_API_KEY)", file=sys.stderr)
    print(f"chat page: http://{args.host}:{args.port}/", file=sys.stderr)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again under the
    # handler found here: make that a normal exit, so the embedded Redis is stopped too.
    signal.signal(signal.SIGTERM, _exit_normally)
    try:
        uvicorn.run(
            "main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            log_config=log_config,  # each worker applies it: LOG_FORMAT=json holds for every line
            access_log=False,  # personachat.logs writes one line per request instead
            timeout_graceful_shutdown=15,
            **server_options(settings),  # httptools with bounds on headers, URL, read and send times
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _prepare_multiprocess_metrics(data_dir: Path) -> None:
    """Workers share their metrics through files (prometheus-client's multiprocess mode):
    use PROMETHEUS_MULTIPROC_DIR if set, else DATA_DIR/metrics, emptied of a previous run's."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(configured) if configured else private_directory(private_directory(data_dir) / "metrics")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


def _raise_open_file_limit() -> None:
    """Each open stream holds two sockets (the client's and the model's): the usual soft limit
    of 1,024 open files would refuse connections from about 500 concurrent answers on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65_536, hard))


def _exit_normally(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
