"""Custom resources checked against the operators' real CRD schemas, offline.

The CRDs are the unmodified upstream files in ../shared/k8s-crds (Strimzi 1.2.0, Altinity
clickhouse-operator 0.25.6, cert-manager 1.15.0; see its README). Each served version's
`openAPIV3Schema` is turned into a JSON Schema the way the API server applies it to a
request with strict field validation (kubectl's default since 1.27):

- an object with `properties` and neither `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields: true` rejects unknown fields;
- `x-kubernetes-int-or-string` accepts an integer or a string; `nullable` accepts null;
- `metadata` is the API server's (name, labels, annotations ...), not the CRD's;
- `x-kubernetes-validations` (CEL) rules are evaluated by a translation of the small CEL
  subset they use (has(), ==, !=, <, &&, ||, !); a rule outside that subset is an error
  here, so none is silently skipped.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jsonschema
import yaml

from conftest import REPO

CRD_DIR = REPO.parent / "shared" / "k8s-crds"
OPERATOR_VERSIONS = {"strimzi-1.2.0": "Strimzi 1.2.0",
                     "altinity-release-0.25.6": "Altinity clickhouse-operator 0.25.6",
                     "certmanager-v1.15.0": "cert-manager 1.15.0"}

_METADATA = {"type": "object", "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
    "additionalProperties": False}


def _to_json_schema(s: Any) -> Any:
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    for k, v in s.items():
        if k in ("properties", "patternProperties"):
            out[k] = {name: _to_json_schema(sub) for name, sub in v.items()}
        elif k == "items" or (k == "additionalProperties" and isinstance(v, dict)):
            out[k] = _to_json_schema(v)
        elif k in ("allOf", "anyOf", "oneOf"):
            out[k] = [_to_json_schema(x) for x in v]
        elif k == "not":
            out[k] = _to_json_schema(v)
        elif k.startswith("x-kubernetes-") or k in ("description", "format", "default",
                                                      "example", "nullable"):
            continue
        else:
            out[k] = v
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s \
            and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crds() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, for every CRD there."""
    found = {}
    for f in sorted(CRD_DIR.glob("*/*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if not d or d.get("kind") != "CustomResourceDefinition":
                continue
            for v in d["spec"]["versions"]:
                if v.get("served"):
                    found[(f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["kind"])] = \
                        v["schema"]["openAPIV3Schema"]
    return found


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = _to_json_schema(crds()[(api_version, kind)])
    schema.setdefault("properties", {})["metadata"] = _METADATA
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["additionalProperties"] = False
    return jsonschema.Draft7Validator(schema)


# -- CEL, the subset the CRDs use ------------------------------------------------------------


def _cel_to_python(rule: str) -> str:
    if re.search(r"[^\w\s().,'\"!=<>&|-]", rule) or re.search(r"\b(size|all|exists|matches|"
                                                             r"startsWith|map|filter)\b", rule):
        raise ValueError(f"CEL rule outside the supported subset: {rule}")
    py = re.sub(r"has\(self\.(\w+)\)", r"('\1' in self)", rule)
    py = re.sub(r"self\.(\w+)", r"self.get('\1')", py)
    py = py.replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"!(?!=)", " not ", py)
    return py.replace("true", "True").replace("false", "False")


def _cel_errors(schema: Any, value: Any, path: str) -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the values present."""
    if not isinstance(schema, dict):
        return []
    out = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not eval(_cel_to_python(rule["rule"]), {}, {"self": value}):  # noqa: S307
            out.append(f"{path or '.'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            out += _cel_errors(sub, v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _cel_errors(schema.get("items"), v, f"{path}[{i}]")
    return out


def cel_rule_count() -> int:
    """CEL rules in all the CRDs (each is evaluated where the manifests set its object)."""
    return sum(len(re.findall(r"'rule': ", repr(s))) for s in crds().values())


def crd_problems(doc: dict) -> list[str]:
    """Why the API server would refuse this custom resource (empty: it validates)."""
    key = (doc["apiVersion"], doc["kind"])
    name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
    if key not in crds():
        served = sorted(v for v, k in crds() if k == doc["kind"])
        return [f"{name}: {doc['apiVersion']} is not served by the CRDs in {CRD_DIR.name} "
                f"(served: {served or 'no such kind'})"]
    out = []
    for err in sorted(_validator(*key).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "."
        if err.validator == "additionalProperties" and err.validator_value is False:
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            out += [f"{name} {where}: unknown field {e}" for e in extra]
        else:
            out.append(f"{name} {where}: {err.message}")
    spec_schema = crds()[key]["properties"].get("spec", {})
    out += [f"{name} spec{e}" for e in _cel_errors(spec_schema, doc.get("spec", {}), "")]
    return out
