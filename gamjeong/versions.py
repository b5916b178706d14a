"""The versions of the libraries a result was made with, as every stage records them: the model card and metrics.json
of a training run, the manifest of an export, the environment of a benchmark."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata


def library_versions(
    packages: Iterable[str], *, python: bool = True, keep_missing: bool = False
) -> dict[str, str | None]:
    """{package: installed version} in the order given, with "python" first unless `python=False`; a package that is
    not installed is left out, or recorded as None with `keep_missing=True`."""
    versions: dict[str, str | None] = {"python": platform.python_version()} if python else {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if keep_missing:
                versions[package] = None
    return versions


def gamjeong_version() -> str:
    """The installed gamjeong's version, as the server reports it ("unknown" when it is not installed)."""
    return library_versions(("gamjeong",), python=False, keep_missing=True)["gamjeong"] or "unknown"
