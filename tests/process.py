"""Running the real CLI as a child process, isolated from this machine's settings.

`isolated_env` is the benchmark's (bench/tools.py): the same clean environment for both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.tools import isolated_env

BIN = Path(sys.executable).parent

__all__ = ["BIN", "isolated_env"]
