"""Validate rendered documents and request bodies against the upstream schemas.

* Argo documents (Workflow, WorkflowTemplate...) against Argo's JSON schema
  (``argo/schema.json``, draft 2020-12, definitions under ``definitions``);
* Argo Server request bodies against the definitions of its OpenAPI document
  (``argo/swagger.json``, Swagger 2.0: a draft-4 subset);
* custom resources against their CRD's ``spec.versions[].schema.openAPIV3Schema``.

Argo substitutes ``{{...}}`` parameters as text before it applies a manifest, so
:func:`substitute` fills them in with example values first; then the manifest is what the
cluster would see.

>>> substitute("name: {{workflow.name}}-x", {"workflow.name": "retrain-e1"})
'name: retrain-e1-x'
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from observer.core.extras import require

# jsonschema is the `argo` extra; `observer pipeline render --schemas` imports this module only
# when asked to check.
require("jsonschema", extra="argo",
        feature="Schema checks of rendered manifests (pipeline render --validate)")
from jsonschema import Draft4Validator, Draft202012Validator  # noqa: E402

CORE_API_VERSIONS = ("v1", "rbac.authorization.k8s.io/v1")
_PLACEHOLDER = re.compile(r"\{\{\s*([^}\s]+)\s*\}\}")


class SchemaError(ValueError):
    """A document does not validate; the message lists every problem with its path."""


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}`` placeholders; an unknown one is an error naming it."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for placeholder {{{{{name}}}}}")
        return values[name]

    return _PLACEHOLDER.sub(one, text)


def _errors(validator: Any, doc: Any, what: str) -> None:
    problems = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if problems:
        lines = [
            f"  at {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:300]}"
            for e in problems[:20]
        ]
        raise SchemaError(f"{what} does not validate:\n" + "\n".join(lines))


@functools.lru_cache(maxsize=8)
def _argo_schema(path: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(Path(path).read_text()))


@functools.lru_cache(maxsize=8)
def _swagger(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


@functools.lru_cache(maxsize=32)
def _crd_validators(path: str) -> dict[tuple[str, str, str], Draft4Validator]:
    """(group, version, kind) -> validator of the CRD at ``path``."""
    # libyaml when present: the KServe CRD is 2 MB, about 10 s for the pure-Python parser.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(Path(path).read_text(), Loader=loader)
    spec = crd["spec"]
    out = {}
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        out[(spec["group"], version["name"], spec["names"]["kind"])] = Draft4Validator(schema)
    return out


def validate_argo(doc: dict[str, Any], schemas: Path | str) -> None:
    """Check an Argo document against ``schemas/argo/schema.json``."""
    kind = doc.get("kind")
    validator = _argo_schema(str(Path(schemas) / "argo" / "schema.json"))
    definition = f"io.argoproj.workflow.v1alpha1.{kind}"
    if definition not in validator.schema["definitions"]:
        raise SchemaError(f"{kind!r} is not an Argo kind")
    # One definition rather than the top-level oneOf: its errors name the real problem.
    sub = Draft202012Validator(
        {"$ref": f"#/definitions/{definition}", "definitions": validator.schema["definitions"]}
    )
    _errors(sub, doc, f"Argo {kind} {doc.get('metadata', {}).get('name', '')!r}")


def validate_argo_body(body: Any, definition: str, schemas: Path | str) -> None:
    """Check an Argo Server request body against a definition of ``argo/swagger.json``."""
    swagger = _swagger(str(Path(schemas) / "argo" / "swagger.json"))
    full = f"io.argoproj.workflow.v1alpha1.{definition}"
    if full not in swagger["definitions"]:
        raise SchemaError(f"no definition {full} in swagger.json")
    validator = Draft4Validator({"$ref": f"#/definitions/{full}", "definitions": swagger["definitions"]})
    _errors(validator, body, f"request body ({definition})")


def crd_files(schemas: Path | str, extra: list[Path] | None = None) -> list[Path]:
    return sorted(Path(schemas, "crds").glob("*.yaml")) + list(extra or [])


def validate_resource(doc: dict[str, Any], crds: list[Path]) -> None:
    """Check a custom resource against the CRD among ``crds`` that defines its kind."""
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    key = (group, version, doc.get("kind", ""))
    # Upstream CRD files are named <group>_<plural>.yaml: those of the document's group first,
    # so that the large ones of other groups (KServe's are megabytes) are not parsed for it.
    for path in sorted(crds, key=lambda c: not Path(c).name.startswith(f"{group}_")):
        validator = _crd_validators(str(path)).get(key)  # type: ignore[arg-type]
        if validator is not None:
            _errors(validator, doc, f"{key[2]} {doc.get('metadata', {}).get('name', '')!r}")
            return
    raise SchemaError(f"no CRD schema for {doc.get('apiVersion')} {doc.get('kind')}")


def example_values(template: dict[str, Any]) -> dict[str, str]:
    """Values for every placeholder a rendered workflow uses (parameters get examples)."""
    values = {"workflow.name": "retrain-0123456789abcdef", "workflow.status": "Failed"}
    values["workflow.namespace"] = template["metadata"].get("namespace", "argo")
    for p in template["spec"]["arguments"]["parameters"]:
        value = p.get("value") or (
            "s3://example/x" if any(w in p["name"] for w in ("data", "uri", "base", "metrics"))
            else "example"
        )
        values[f"workflow.parameters.{p['name']}"] = value
    return values


def check_all(
    docs: dict[str, dict[str, Any]], schemas: Path | str, extra_crds: list[Path] | None = None
) -> list[str]:
    """Validate every rendered document (and every manifest inside the WorkflowTemplate).

    Returns the documents no schema covers (core Kubernetes kinds such as RBAC, or a kind
    whose CRD is neither in ``schemas/crds`` nor in ``extra_crds``); raises
    :class:`SchemaError` on the first document that does not validate.
    """
    crds = crd_files(schemas, extra_crds)
    template = next(d for d in docs.values() if d.get("kind") == "WorkflowTemplate")
    values = example_values(template)
    skipped = []
    for rel, doc in sorted(docs.items()):
        if doc.get("apiVersion", "").startswith("argoproj.io/"):
            validate_argo(doc, schemas)
            for tpl in doc["spec"]["templates"]:
                if "resource" in tpl:
                    manifest = yaml.safe_load(substitute(tpl["resource"]["manifest"], values))
                    try:
                        validate_resource(manifest, crds)
                    except SchemaError as e:
                        if str(e).startswith("no CRD schema"):
                            skipped.append(f"{rel}#{tpl['name']}")
                            continue
                        raise SchemaError(f"{rel}, template {tpl['name']}: {e}") from None
        elif doc.get("apiVersion") in CORE_API_VERSIONS:
            skipped.append(rel)  # core Kubernetes kinds: no schema in the set
        else:
            try:
                validate_resource(yaml.safe_load(substitute(yaml.safe_dump(doc), values)), crds)
            except SchemaError as e:
                if str(e).startswith("no CRD schema"):
                    skipped.append(rel)
                    continue
                raise SchemaError(f"{rel}: {e}") from None
    return skipped
