"""The Celery workers: validate cases, fetch their files, keep the archive.

``celery -A worker worker`` finds the application as ``worker.app``; it is built from the
environment on first access, so importing this package opens nothing.
"""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name in {"app", "celery"}:
        if _app is None:
            from casefetch.errors import CasefetchError
            from worker.celery_app import create_celery_app, install_sweeper
            from worker.observe import install

            try:
                _app = create_celery_app()
            except CasefetchError as exc:  # a bad setting: one line, as `casefetch worker` says it
                raise SystemExit(f"casefetch: {exc}") from None
            install_sweeper(_app)
            install(_app, _app.settings.metrics_port)
        return _app
    raise AttributeError(name)
