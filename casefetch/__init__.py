"""casefetch: receive certificate cases by webhook and archive their files, verified.

This package holds what the receiver and the worker must agree on (queue names, Redis keys,
the message they exchange), the settings helpers and the command line.
"""

__version__ = "0.1.0"
