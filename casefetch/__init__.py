"""casefetch: receive certificate cases by webhook and archive their files, verified.

This package holds what the receiver and the worker must agree on (queue names, Redis keys,
the message they exchange), the settings helpers, errors and logs. It imports neither side;
the command line and the development tools live above both, in `casefetch_tools`.
"""

__version__ = "0.1.0"
