"""Where the repository is: the processes the tests start run from it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
