"""Running the real CLI as a child process, isolated from this machine's settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def isolated_env() -> dict[str, str]:
    """This machine's environment without keruta settings or any way to a real cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERUTA_", "KUBERNETES_"))}
    env["KUBECONFIG"] = "/nonexistent/kubeconfig"
    return env
