"""A tiny pure-Python kustomize, just enough for deploy/k8s.

The deploy tests render the overlays with `kubectl kustomize` when kubectl is
installed, and with this module otherwise, so they still run on machines
without it. It supports only the kustomization fields deploy/k8s uses and
raises NotImplementedError on anything else rather than render something
different from real kustomize; when kubectl is present a test checks that
both renderers agree on every overlay.

Supported: `resources` (files and directories), `components`, `namespace`,
`labels` (metadata only: includeSelectors/includeTemplates false),
`images`, `patches` (strategic-merge patches of maps only, from a file or
inline, matched by kind and name; or JSON 6902 `add` lists and strategic
merges applied to a `target` selected by kind, name and label selector), and
`configMapGenerator` (files, literals, behavior create/replace/merge) with kustomize's content-hash name suffix and the
ConfigMap name references in pod specs updated to match.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

_KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "components",
    "configMapGenerator",
    "images",
    "patches",
}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
# Internal marker for generated ConfigMaps awaiting their hash suffix.
_GENERATED = "__kustomize_lite_generated__"
# Internal marker for binding subjects whose namespace a `namespace:` set (and the next one may move).
_SET_BY_US = "__kustomize_lite_namespaced__"


def build(path: str | Path) -> list[dict]:
    """Render the kustomization in directory `path` to a list of resources."""
    resources = _build(Path(path), [], expect_kind="Kustomization")
    _finish_generated(resources)
    return resources


def _load_kustomization(directory: Path) -> dict:
    for name in _KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - _SUPPORTED_FIELDS
            if unknown:
                raise NotImplementedError(f"{path}: kustomize_lite does not support {sorted(unknown)}")
            return data
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _build(directory: Path, accumulated: list[dict], expect_kind: str) -> list[dict]:
    """Build one kustomization (or apply one component) on top of `accumulated`."""
    k = _load_kustomization(directory)
    kind = k.get("kind", "Kustomization")
    if kind != expect_kind:
        raise ValueError(f"{directory}: expected kind {expect_kind}, found {kind}")

    resources = accumulated
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            # A directory is an independent kustomization, built on its own.
            resources.extend(_build(path, [], expect_kind="Kustomization"))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    # A component's generators and transformers see everything accumulated
    # so far, so it can modify what the parent brought in.
    for entry in k.get("components", []):
        resources = _build(directory / entry, resources, expect_kind="Component")

    for gen in k.get("configMapGenerator", []):
        _generate_configmap(directory, gen, resources)

    for entry in k.get("patches", []):
        _apply_patch(directory, entry, resources)
    if "namespace" in k:
        for res in resources:
            if res.get("kind") not in _CLUSTER_SCOPED:
                res.setdefault("metadata", {})["namespace"] = k["namespace"]
            elif res.get("kind") == "Namespace":  # kustomize renames the Namespace object too
                res["metadata"]["name"] = k["namespace"]
            _set_subject_namespaces(res, k["namespace"])
    for entry in k.get("labels", []):
        extra = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if extra or entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise NotImplementedError(f"{directory}: only metadata labels are supported: {entry}")
        for res in resources:
            res.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in k.get("images", []):
        _set_image(resources, image)
    return resources


def _set_subject_namespaces(res: dict, namespace: str) -> None:
    """ServiceAccount subjects of a (Cluster)RoleBinding written without a namespace follow the
    `namespace:` of every kustomization above them, as in kustomize; one written with it keeps it."""
    if res.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
        return
    for subject in res.get("subjects") or []:
        if subject.get("kind") == "ServiceAccount" and (_SET_BY_US in subject or not subject.get("namespace")):
            subject["namespace"] = namespace
            subject[_SET_BY_US] = True


def _apply_patch(directory: Path, entry: dict, resources: list[dict]) -> None:
    """A strategic-merge patch naming its resource, or one (or a JSON 6902 list of operations) applied
    to every resource a `target` selects by kind and label selector."""
    if set(entry) - {"path", "patch", "target"}:
        raise NotImplementedError(f"{directory}: only path/patch/target patches: {entry}")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    patch = yaml.safe_load(text)
    if "target" in entry:
        for res in [r for r in resources if _selected(r, entry["target"])]:
            if isinstance(patch, list):
                _json_patch(res, patch)
            else:
                _merge(res, _without_metadata(patch))
        return
    targets = [
        r for r in resources
        if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
    ]
    if len(targets) != 1:
        raise ValueError(f"{directory}: patch matches {len(targets)} resources: {patch['metadata']['name']}")
    if patch.get("$patch") == "delete":
        resources.remove(targets[0])
        return
    _merge(targets[0], patch)


def _without_metadata(patch: dict) -> dict:
    return {k: v for k, v in patch.items() if k not in ("metadata", "apiVersion", "kind")}


def _selected(res: dict, target: dict) -> bool:
    """`kind`, `name` (exact: no regular expression) and `labelSelector` (`key=value` or `key in (a,b)`,
    comma-joined terms not supported)."""
    if set(target) - {"kind", "name", "labelSelector"}:
        raise NotImplementedError(f"kustomize_lite selects by kind, name and labelSelector only: {target}")
    if res["kind"] != target.get("kind", res["kind"]):
        return False
    if res.get("metadata", {}).get("name") != target.get("name", res.get("metadata", {}).get("name")):
        return False
    selector = target.get("labelSelector")
    if not selector:
        return True
    labels = res.get("metadata", {}).get("labels", {})
    if " in (" in selector:
        key, values = selector.split(" in (", 1)
        return labels.get(key.strip()) in {v.strip() for v in values.rstrip(")").split(",")}
    key, value = selector.split("=", 1)
    return labels.get(key.strip()) == value.strip()


def _json_patch(res: dict, operations: list[dict]) -> None:
    """JSON 6902 `add` (a missing final key is created; `-` appends) and `remove`, all these components use."""
    for op in operations:
        if op["op"] not in ("add", "remove"):
            raise NotImplementedError(f"kustomize_lite supports JSON patch `add` and `remove` only: {op}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = res
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list) and last == "-":
            node.append(copy.deepcopy(op["value"]))
        elif isinstance(node, list):
            node.insert(int(last), copy.deepcopy(op["value"]))
        else:
            node[last] = copy.deepcopy(op["value"])


# Lists of maps merge item by item on these keys (Kubernetes' patch merge keys), as kustomize does.
_MERGE_KEYS = ("name", "mountPath", "containerPort")


def _merge(target: dict, patch: dict) -> None:
    """Strategic merge: maps key by key (null deletes), lists of maps by their merge key."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
            if not target[key] and value:  # emptied by the patch's nulls: kustomize drops the map
                del target[key]
        elif isinstance(value, list) and isinstance(target.get(key), list):
            _merge_list(target[key], value, key)
        else:
            target[key] = copy.deepcopy(value)  # one patch may apply to several resources


def _merge_list(items: list, patch: list, key: str) -> None:
    merge_key = next((k for k in _MERGE_KEYS if patch and all(isinstance(p, dict) and k in p for p in patch)), None)
    if merge_key is None:
        raise NotImplementedError(f"kustomize_lite cannot strategic-merge the list {key!r}")
    # As kustomize orders them: the patch's items first, in its order, then the untouched ones.
    merged = []
    for change in patch:
        match = next((i for i in items if i.get(merge_key) == change[merge_key]), None)
        if match is not None:
            items.remove(match)
        if change.get("$patch") == "delete":
            continue
        if match is None:
            match = {}
        _merge(match, change)
        merged.append(match)
    items[:0] = merged


def _generate_configmap(directory: Path, gen: dict, resources: list[dict]) -> None:
    unknown = set(gen) - {"name", "files", "literals", "behavior"}
    if unknown:
        raise NotImplementedError(f"configMapGenerator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, _, rel = entry.partition("=") if "=" in entry else ("", "", entry)
        path = directory / rel
        if not path.resolve().is_relative_to(directory.resolve()):
            # Same rule as kustomize's default load restrictor.
            raise ValueError(f"{entry}: file outside the kustomization root {directory}")
        data[key or path.name] = path.read_text()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value

    behavior = gen.get("behavior", "create")
    existing = [r for r in resources if r.get(_GENERATED) and r["metadata"]["name"] == gen["name"]]
    if behavior == "create":
        if existing:
            raise ValueError(f"configMapGenerator {gen['name']}: already exists, use behavior merge/replace")
        resources.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
                _GENERATED: True,
            }
        )
    elif behavior in ("replace", "merge"):
        if len(existing) != 1:
            raise ValueError(f"configMapGenerator {gen['name']}: {behavior} needs exactly one to act on")
        if behavior == "replace":
            existing[0]["data"] = data
        else:
            existing[0]["data"].update(data)
    else:
        raise NotImplementedError(f"configMapGenerator behavior {behavior}")


def _configmap_hash(data: dict[str, str]) -> str:
    """kustomize's hash suffix: sha256 of Go's json.Marshal of {data, kind, name}.

    kustomize 5 hashes the ConfigMap before its name is set, so "name" is
    empty (checked against `kubectl kustomize` by the parity test).
    """
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # Go's encoder also escapes these, so the bytes (and the hash) match.
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(char, escaped)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    # kustomize's substitutions (so suffixes never spell words or look numeric).
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _finish_generated(resources: list[dict]) -> None:
    for res in resources:
        for subject in res.get("subjects") or []:
            subject.pop(_SET_BY_US, None)
    renamed: dict[tuple[str | None, str], str] = {}
    for res in resources:
        if res.pop(_GENERATED, False):
            meta = res["metadata"]
            new_name = f"{meta['name']}-{_configmap_hash(res['data'])}"
            renamed[(meta.get("namespace"), meta["name"])] = new_name
            meta["name"] = new_name
    for res in resources:
        for spec in _pod_specs(res):
            ns = res.get("metadata", {}).get("namespace")
            for ref in _configmap_refs(spec):
                ref["name"] = renamed.get((ns, ref["name"]), ref["name"])


def _pod_specs(res: dict) -> list[dict]:
    kind, spec = res.get("kind"), res.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [spec.get("template", {}).get("spec", {})]
    return []


def _containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _configmap_refs(spec: dict) -> list[dict]:
    refs = []
    for vol in spec.get("volumes") or []:
        if "configMap" in vol:
            refs.append(vol["configMap"])
        for source in (vol.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                refs.append(source["configMap"])
    for container in _containers(spec):
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                refs.append(ref)
        for env_from in container.get("envFrom") or []:
            if "configMapRef" in env_from:
                refs.append(env_from["configMapRef"])
    return refs


def _split_image(image: str) -> tuple[str, str, str]:
    """'repo/name:tag@sha256:..' -> (name, ':tag', '@digest')."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon:]
    return name, tag, f"@{digest}" if digest else ""


def _set_image(resources: list[dict], entry: dict) -> None:
    unknown = set(entry) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise NotImplementedError(f"images fields {sorted(unknown)}")
    for res in resources:
        for spec in _pod_specs(res):
            for container in _containers(spec):
                name, tag, digest = _split_image(container.get("image", ""))
                if name != entry["name"]:
                    continue
                name = entry.get("newName", name)
                if "newTag" in entry:
                    tag, digest = f":{entry['newTag']}", ""
                if "digest" in entry:
                    tag, digest = "", f"@{entry['digest']}"
                container["image"] = f"{name}{tag}{digest}"
