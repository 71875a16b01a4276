"""structlog configuration: JSON lines on stderr with stable event names.

Call :func:`configure` once at start (the CLI does); modules get loggers with
``structlog.get_logger(__name__)`` and log events such as ``record_rejected`` with
bound context (``incident_id``, ``service``), never formatted prose.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO", fmt: str = "json") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # Resolve sys.stderr at each use, not at configure time: test runners and daemonising swap it.
    return structlog.PrintLogger(file=sys.stderr)
