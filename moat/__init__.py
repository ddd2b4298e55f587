"""Moat: sequence-level model-extraction risk scoring for AI APIs.

The top-level folders of the repository are this package's parts, mapped into one namespace by
`pyproject.toml` (package-dir): `moat.models` (the numpy core), `moat.data_gen`,
`moat.training`, `moat.serving` and `moat.evals`. Imports point down to the core.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moat")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
