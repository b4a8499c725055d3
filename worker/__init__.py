"""The Celery workers: validate cases, fetch their files, keep the archive.

``celery -A worker worker`` finds the application as ``worker.celery``, built by
:func:`worker.app.build_worker` from the environment on first access: importing this package
(or any module of it) neither loads Celery nor opens anything.
"""

from __future__ import annotations

from typing import Any

from casefetch.errors import CasefetchError

_celery: Any = None


def __getattr__(name: str) -> Any:
    global _celery
    if name != "celery":
        raise AttributeError(name)
    if _celery is None:
        # Here, not at the top: what imports worker.storage alone must not load Celery.
        from worker.app import build_worker

        try:
            _celery = build_worker()
        except CasefetchError as exc:  # a bad setting: one line, as `casefetch worker` says it
            raise SystemExit(f"casefetch: {exc}") from None
    return _celery
