"""A small kustomize renderer for netmon's own k8s/ tree, so the manifest tests run where no
`kubectl` is installed (Debian's kubernetes-client is 1.20, whose kustomize predates `labels`
and `patches`). It implements exactly what our kustomizations use and refuses anything else
with a RenderError, so it can never silently render differently from kustomize; where
`kubectl` is present, tests/test_k8s_manifests.py checks its output equals `kubectl kustomize`.

Supported: resources (files and directories), namespace, labels (metadata only),
generatorOptions.disableNameSuffixHash=true, configMapGenerator / secretGenerator
(literals, behavior create|merge|replace), patches (strategic merge, by kind and name),
images (name -> newName / newTag / digest, applied to every container list, as kustomize does).
Order of operations follows kustomize: resources, generators, patches, namespace, labels, images.
"""
from __future__ import annotations

import base64
import copy
import os
from typing import Any

import yaml

SUPPORTED_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "labels", "generatorOptions",
    "configMapGenerator", "secretGenerator", "patches", "images",
}
# Kinds without a namespace among those netmon ships (namespace transformer skips them).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "PersistentVolume",
    "StorageClass", "CustomResourceDefinition",
}


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement, or is invalid."""


def render(path: str) -> list[dict]:
    """Render the kustomization in directory `path` to a list of Kubernetes objects."""
    return _build(os.path.abspath(path))


def load_yaml_docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def object_key(obj: dict) -> tuple[str, str, str]:
    md = obj.get("metadata", {})
    return obj["kind"], md.get("namespace", ""), md["name"]


def _build(kdir: str) -> list[dict]:
    kfile = os.path.join(kdir, "kustomization.yaml")
    if not os.path.isfile(kfile):
        raise RenderError(f"{kdir}: no kustomization.yaml")
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{kfile}: unsupported fields {sorted(unknown)}")

    objs: list[dict] = []
    for res in k.get("resources", []):
        p = os.path.normpath(os.path.join(kdir, res))
        objs += _build(p) if os.path.isdir(p) else load_yaml_docs(p)

    opts = k.get("generatorOptions", {})
    if set(opts) - {"disableNameSuffixHash"} or (opts and opts.get("disableNameSuffixHash") is not True):
        # Hash suffixes need kustomize's exact hash and reference rewriting: not implemented.
        raise RenderError(f"{kfile}: only generatorOptions.disableNameSuffixHash: true is supported")
    if (k.get("configMapGenerator") or k.get("secretGenerator")) and not opts:
        raise RenderError(f"{kfile}: generators need generatorOptions.disableNameSuffixHash: true")
    for gen in k.get("configMapGenerator", []):
        _generate(objs, gen, "ConfigMap", kfile)
    for gen in k.get("secretGenerator", []):
        _generate(objs, gen, "Secret", kfile)

    for patch in k.get("patches", []):
        _apply_patches(objs, patch, kdir, kfile)

    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = ns
            for s in o.get("subjects", []) if o["kind"] in ("RoleBinding", "ClusterRoleBinding") else []:
                if s.get("kind") == "ServiceAccount":
                    s["namespace"] = ns

    for spec in k.get("labels", []):
        if set(spec) - {"pairs", "includeSelectors", "includeTemplates"} or spec.get("includeSelectors") or spec.get("includeTemplates"):
            raise RenderError(f"{kfile}: only labels with `pairs` (metadata only) are supported")
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])

    for img in k.get("images", []):
        if set(img) - {"name", "newName", "newTag", "digest"}:
            raise RenderError(f"{kfile}: unsupported image fields in {img}")
        for o in objs:
            _set_images(o, img)
    return objs


def _generate(objs: list[dict], gen: dict, kind: str, kfile: str) -> None:
    if set(gen) - {"name", "literals", "behavior", "type"}:
        raise RenderError(f"{kfile}: unsupported {kind} generator fields in {gen.get('name')}")
    data: dict[str, str] = {}
    for lit in gen.get("literals", []):
        if "=" not in lit:
            raise RenderError(f"{kfile}: literal {lit!r} has no '='")
        key, value = lit.split("=", 1)
        data[key] = value
    if kind == "Secret":
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    behavior = gen.get("behavior", "create")
    existing = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == gen["name"]]
    if behavior == "create":
        if existing:
            raise RenderError(f"{kfile}: {kind} {gen['name']} already exists (use behavior: merge)")
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
        if data:
            obj["data"] = data
        if kind == "Secret":
            obj["type"] = gen.get("type", "Opaque")
        objs.append(obj)
    elif behavior in ("merge", "replace"):
        if len(existing) != 1:
            raise RenderError(f"{kfile}: {behavior} needs exactly one {kind} {gen['name']}, found {len(existing)}")
        if behavior == "replace":
            existing[0]["data"] = data
        else:
            existing[0].setdefault("data", {}).update(data)
    else:
        raise RenderError(f"{kfile}: unknown generator behavior {behavior!r}")


def _apply_patches(objs: list[dict], patch: dict, kdir: str, kfile: str) -> None:
    if set(patch) - {"path", "patch"}:
        raise RenderError(f"{kfile}: only strategic-merge patches by path or inline are supported")
    docs = load_yaml_docs(os.path.join(kdir, patch["path"])) if "path" in patch else \
        [d for d in yaml.safe_load_all(patch["patch"]) if d]
    for doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        targets = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
        if len(targets) != 1:
            raise RenderError(f"{kfile}: patch for {kind}/{name} matches {len(targets)} objects")
        merged = strategic_merge(targets[0], doc)
        targets[0].clear()
        targets[0].update(merged)


def strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic merge for the shapes we patch: maps merge recursively (null deletes a key);
    lists of maps that all carry `name` merge by name; any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if "$patch" in patch:
            raise RenderError("$patch directives are not supported")
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and base and patch and all(
            isinstance(i, dict) and "name" in i for i in base + patch):
        out = copy.deepcopy(base)
        index = {item["name"]: n for n, item in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """`registry/name:tag@sha256:...` -> (name, tag, digest); a port colon is not a tag."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
    return ref, tag, digest


def _set_images(node: Any, img: dict) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        name, tag, digest = split_image(c["image"])
                        if name == img["name"]:
                            name = img.get("newName", name)
                            tag = img.get("newTag", tag)
                            digest = img.get("digest", digest)
                            c["image"] = name + (f":{tag}" if tag and not img.get("digest") else "") + \
                                (f"@{digest}" if digest else "")
            _set_images(value, img)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, img)
