"""Optional dependencies: import one, or say in one line why it cannot be used.

A package can be missing, or installed but broken (a release that does not match its
neighbours, e.g. a ``distributed`` far older than ``dask``). The two need different fixes, so
the message tells them apart and, for a broken one, quotes the import error itself.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

__all__ = ["import_error_text", "require", "status"]

# What `dpo-fast info` lists: module name -> distribution name.
OPTIONAL = {"pyarrow": "pyarrow", "tqdm": "tqdm", "dask": "dask",
            "distributed": "distributed", "torch": "torch", "matplotlib": "matplotlib"}


def _installed_version(module: str) -> str | None:
    try:
        return importlib.metadata.version(OPTIONAL.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return None


def import_error_text(exc: BaseException) -> str:
    """An import failure in one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def status(module: str) -> tuple[str | None, str | None]:
    """``(version, problem)`` of an optional package.

    ``version`` is the installed distribution's version (None if it is not installed);
    ``problem`` is None when the module imports, else the import error in one line.
    """
    version = _installed_version(module)
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - anything an import raises makes it unusable
        return version, import_error_text(exc)
    return version, None


def require(module: str, *, needed_by: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to get a working one.

    Parameters
    ----------
    module : str
        The module to import, e.g. ``"distributed"``.
    needed_by : str
        What needs it, as the user calls it, e.g. ``"dpo-fast score --scheduler"``.
    extra : str
        The dpo_fast extra that installs it, e.g. ``"dask"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        version = _installed_version(module)
        if version is None:
            message = f'{needed_by} needs {module}: pip install "dpo_fast[{extra}]"'
        else:
            message = (f"{needed_by} needs {module}, which is installed ({version}) but does not "
                       f"import ({import_error_text(exc)}); install matching releases: "
                       f'pip install --upgrade "dpo_fast[{extra}]"')
        raise ImportError(message) from exc
