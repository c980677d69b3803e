"""The kernel: Flight server, stores, executor and the injected `flowfile` module."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kernel-runtime")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
