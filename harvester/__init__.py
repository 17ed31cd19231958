"""keruta-harvester: harvests a keruta task's documents from its volume into keruta-api."""

# The one place the version is written: pyproject.toml reads it from here (setuptools'
# `attr:`), which spares every run the import of importlib.metadata that asking the installed
# distribution costs (some 25 ms of start-up).
__version__ = "0.1.0"

USER_AGENT = f"keruta-harvester/{__version__}"
