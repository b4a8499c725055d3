"""The webhook receiver: authenticate, check, enqueue durably, answer.

It is kept small and fast on purpose and never imports the worker.
"""

from receiver.app import create_app
from receiver.settings import ReceiverSettings

__all__ = ["ReceiverSettings", "create_app"]
