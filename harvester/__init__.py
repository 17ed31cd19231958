"""keruta-harvester: harvests a keruta task's documents from its volume into keruta-api."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("keruta-harvester")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

USER_AGENT = f"keruta-harvester/{__version__}"
