"""casefetch_tools: the command line, the demo platform and the development servers.

This package sits above both sides: it imports `receiver` and `worker` to run and inspect them,
and neither of them (nor the shared `casefetch` package below them) ever imports it.
"""
