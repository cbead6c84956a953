"""deploy/k8s rendered offline: a kustomize subset, lookups, and the Secrets made outside it.

Shared by tests/deploy/test_deploy.py and tests/deploy/. The renderer implements what the manifests
use (resources, strategic-merge and JSON 6902 patches, images with tags and digests,
replacements, namespace); `kubectl kustomize` must agree with it where kubectl is installed
(tests/deploy/test_deploy.py::test_renderer_agrees_with_kubectl_kustomize).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
K8S_VERSION = "1.33.0"
IMAGE = "headwater"
SECRETS_SCRIPT = K8S / "secrets.sh"
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                   "CustomResourceDefinition", "PersistentVolume", "StorageClass"}
_CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2",
                "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}

# -- a kustomize subset ---------------------------------------------------------------------


def _merge(base: Any, patch: Any, by_name: bool) -> Any:
    """Strategic merge: maps merge, null deletes; lists of named maps merge by `name`
    (core kinds: containers, env, volumes), any other list is replaced (CRs: no schema)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v, by_name) if k in base else copy.deepcopy(v)
        return out
    named = lambda xs: all(isinstance(x, dict) and "name" in x for x in xs)  # noqa: E731
    if by_name and isinstance(base, list) and isinstance(patch, list) and named(base) \
            and named(patch):
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            at = [i for i, x in enumerate(out_list) if x["name"] == item["name"]]
            if at:
                out_list[at[0]] = _merge(out_list[at[0]], item, by_name)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _containers(doc: dict) -> list[dict]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def all_containers(obj: Any) -> list[dict]:
    """Every container anywhere in an object (what kustomize's image transformer reaches:
    any `containers` / `initContainers` list, custom resources' pod templates included)."""
    found: list[dict] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                found += [c for c in v if isinstance(c, dict) and "image" in c]
            else:
                found += all_containers(v)
    elif isinstance(obj, list):
        for v in obj:
            found += all_containers(v)
    return found


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference (a registry port is part of the name)."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1:], digest or None
    return rest, None, digest or None


def _set_image(doc: dict, rule: dict) -> None:
    for c in all_containers(doc):
        name, tag, digest = split_image(c["image"])
        if name != rule["name"]:
            continue
        name = rule.get("newName", name)
        tag = rule.get("newTag", tag)
        digest = rule.get("digest", digest)
        c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _path_steps(field_path: str) -> list[str]:
    """`a.b.[name=x].c` -> steps; `[k=v]` selects the list item whose k is v."""
    return re.findall(r"\[[^\]]*\]|[^.\[\]]+", field_path)


def _get_field(obj: Any, field_path: str) -> Any:
    for step in _path_steps(field_path):
        if step.startswith("["):
            key, _, value = step[1:-1].partition("=")
            (obj,) = [x for x in obj if x.get(key) == value]
        else:
            obj = obj[step]
    return obj


def _set_field(obj: Any, field_path: str, value: Any, create: bool) -> None:
    steps = _path_steps(field_path)
    for step in steps[:-1]:
        if step.startswith("["):
            key, _, v = step[1:-1].partition("=")
            (obj,) = [x for x in obj if x.get(key) == v]
        else:
            if step not in obj:
                assert create, f"{field_path}: {step} missing (create: false)"
                obj[step] = {}
            obj = obj[step]
    assert create or steps[-1] in obj, f"{field_path} missing (create: false)"
    obj[steps[-1]] = value


def _delimited(value: str, options: dict) -> str:
    if "delimiter" not in options:
        return value
    parts = value.split(options["delimiter"])
    index = options.get("index", 0)
    assert 0 <= index < len(parts), f"options.index {index} is out of bounds for value {value}"
    return parts[index]


def _selects(doc: dict, select: dict) -> bool:
    return all(doc["metadata"]["name"] == v if k == "name" else doc["kind"] == v if k == "kind"
               else True for k, v in select.items())


def _replace(docs: list[dict], rule: dict) -> None:
    """kustomize `replacements` (source -> targets; delimiter/index on either side)."""
    src = rule["source"]
    (source,) = [d for d in docs if _selects(d, {k: v for k, v in src.items()
                                                 if k in ("kind", "name")})]
    value = _delimited(str(_get_field(source, src["fieldPath"])), src.get("options", {}))
    for target in rule["targets"]:
        options = target.get("options", {})
        for d in [d for d in docs if _selects(d, target["select"])]:
            for fp in target["fieldPaths"]:
                new = value
                if "delimiter" in options:
                    parts = str(_get_field(d, fp)).split(options["delimiter"])
                    parts[options.get("index", 0)] = value
                    new = options["delimiter"].join(parts)
                _set_field(d, fp, new, options.get("create", False))


def _json_patch(doc: dict, ops: list[dict]) -> dict:
    """RFC 6902 add / replace / remove with plain paths (`-` appends to a list)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        obj: Any = doc
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        if op["op"] == "remove":
            del obj[int(last) if isinstance(obj, list) else last]
        elif isinstance(obj, list):
            value = copy.deepcopy(op["value"])
            if last == "-":
                obj.append(value)
            elif op["op"] == "add":
                obj.insert(int(last), value)
            else:
                obj[int(last)] = value
        else:
            assert op["op"] in ("add", "replace"), op
            obj[last] = copy.deepcopy(op["value"])
    return doc


def render(directory: Path) -> list[dict]:
    """The documents `kustomize build directory` produces, for the features used here."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - {"apiVersion", "kind", "resources", "patches", "images", "namespace",
                        "replacements"}
    assert not unknown, f"{directory}: the test renderer does not implement {unknown}"
    docs: list[dict] = []
    for r in k.get("resources", []):
        path = directory / r
        docs += render(path) if path.is_dir() else [
            d for d in yaml.safe_load_all(path.read_text()) if d]
    for p in k.get("patches", []):
        if "target" in p:
            t = p["target"]
            hits = [i for i, d in enumerate(docs) if d["kind"] == t["kind"]
                    and d["metadata"]["name"] == t["name"]]
            assert len(hits) == 1, f"{directory / p['path']}: patch target {t} not found"
            ops = yaml.safe_load((directory / p["path"]).read_text())
            docs[hits[0]] = _json_patch(docs[hits[0]], ops)
            continue
        for patch in yaml.safe_load_all((directory / p["path"]).read_text()):
            key = (patch["kind"], patch["metadata"]["name"])
            hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == key]
            assert len(hits) == 1, f"{directory / p['path']}: patch target {key} not found"
            body = {k2: v for k2, v in patch.items() if k2 not in ("apiVersion", "kind")}
            docs[hits[0]] = _merge(docs[hits[0]], body, patch["apiVersion"] in _CORE_GROUPS)
    for d in docs:
        for rule in k.get("images", []):
            _set_image(d, rule)
    for rule in k.get("replacements", []):
        _replace(docs, rule)
    for d in docs:
        if "namespace" in k and d["kind"] not in _CLUSTER_SCOPED:
            d["metadata"]["namespace"] = k["namespace"]
    return docs


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(render(K8S / overlay))


def one(docs: tuple[dict, ...], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def of_kind(docs: tuple[dict, ...], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# -- Secrets made outside the manifests -----------------------------------------------------


@cache
def script_secrets() -> dict[str, frozenset[str]]:
    """Secret name -> keys, as deploy/k8s/secrets.sh creates them (`ensure_secret NAME
    KEY=VALUE|KEY@FILE ...`, continuation lines joined)."""
    text = SECRETS_SCRIPT.read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["ensure_secret"] and len(words) > 1:
            keys = [re.split(r"[=@]", w.strip('"'), maxsplit=1)[0] for w in words[2:]]
            found[words[1]] = frozenset(keys)
    return found


def initial_token_file() -> str:
    """The token file secrets.sh creates (no tokens, one comment line)."""
    found = re.search(r'^echo "(#[^"]*)" > "\$tokens"$', SECRETS_SCRIPT.read_text(), re.M)
    assert found, "secrets.sh writes no initial token file"
    return found.group(1) + "\n"


def secret_keys(docs: tuple[dict, ...], name: str) -> set[str] | None:
    """The keys Secret `name` will hold: one secrets.sh creates, the one cert-manager writes
    for a Certificate (ca.crt too when its Issuer is a CA or self-signed), or the one
    Strimzi's User Operator writes for a KafkaUser; None when nothing makes it."""
    for d in of_kind(docs, "Secret"):  # none today: Secrets are never rendered
        if d["metadata"]["name"] == name:
            return set(d.get("stringData", {})) | set(d.get("data", {}))
    if name in script_secrets():
        return set(script_secrets()[name])
    for cert in of_kind(docs, "Certificate"):
        if cert["spec"]["secretName"] == name:
            keys = {"tls.crt", "tls.key"}
            ref = cert["spec"]["issuerRef"]
            if ref.get("kind", "Issuer") == "Issuer":
                issuer = one(docs, "Issuer", ref["name"])["spec"]
                keys |= {"ca.crt"} if {"ca", "selfSigned"} & set(issuer) else set()
            return keys
    for user in of_kind(docs, "KafkaUser"):
        if user["metadata"]["name"] == name and \
                user["spec"].get("authentication", {}).get("type") == "scram-sha-512":
            return {"password", "sasl.jaas.config"}
    return None
