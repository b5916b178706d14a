"""The subset of kustomize that deploy/k8s uses, for CI machines without a kustomize binary.

No PyPI package ships kustomize itself (checked: `pykustomize` is not on the index; `kustomize` 0.6.0 on PyPI is an
unrelated Python reimplementation), so tests/test_deploy_k8s.py renders with `kubectl kustomize` or `kustomize build`
when one is installed, and with this otherwise. Where a binary is present the test also checks that both render the
same objects, which keeps this one honest. It supports exactly: `resources` (files and directories), `images`
(newName/newTag/digest) and `patches` holding JSON 6902 operations with a `target`; anything else is refused rather
than half-applied.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches"}


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise NotImplementedError(f"{directory}: kustomize_lite does not support {sorted(unsupported)}")
    documents: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((directory / patch["path"]).read_text(encoding="utf-8"))
        if not isinstance(operations, list):
            raise NotImplementedError(f"{patch['path']}: only JSON 6902 patches (a list of operations) are supported")
        targets = [d for d in documents if _matches(d, patch["target"])]
        if not targets:
            raise ValueError(f"patch {patch['path']} matches no object")
        for document in targets:
            for operation in operations:
                _apply(document, operation)
    for image in kustomization.get("images", []):
        for document in documents:
            for container in _containers(document):
                _set_image(container, image)
    return documents


def _matches(document: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = document.get("apiVersion", "").rpartition("/")
    wanted = {"kind": document.get("kind"), "name": document.get("metadata", {}).get("name")}
    wanted |= {"group": group, "version": version}
    return all(wanted.get(key) == value for key, value in target.items())


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def _apply(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove)."""
    *parents, last = _pointer(operation["path"])
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    value = copy.deepcopy(operation.get("value"))
    if isinstance(node, list):
        if op == "add":
            node.insert(len(node) if last == "-" else int(last), value)
        elif op == "replace":
            node[int(last)] = value
        elif op == "remove":
            del node[int(last)]
        else:
            raise NotImplementedError(op)
        return
    if op in ("replace", "remove") and last not in node:
        raise ValueError(f"{operation['path']} does not exist")
    if op in ("add", "replace"):
        node[last] = value
    elif op == "remove":
        del node[last]
    else:
        raise NotImplementedError(op)


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def _set_image(container: dict[str, Any], image: dict[str, str]) -> None:
    name, tag = container["image"], ""
    if "@" in name:
        name, tag = name.split("@", 1)[0], "@" + name.split("@", 1)[1]
    elif ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)[0], ":" + name.rsplit(":", 1)[1]
    if name != image["name"]:
        return
    name = image.get("newName", name)
    if "digest" in image:
        tag = "@" + image["digest"]
    elif "newTag" in image:
        tag = ":" + image["newTag"]
    container["image"] = name + tag
