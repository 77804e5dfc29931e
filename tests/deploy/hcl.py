"""Read the Terraform configuration with python-hcl2, as plain dicts keyed by type and name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2


def _plain(value: Any) -> Any:
    """python-hcl2 keeps HCL's quotes on keys and string literals; drop them, keep `${...}`."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass
class Terraform:
    """Blocks of every .tf file in a directory, merged."""

    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform: list[dict[str, Any]] = field(default_factory=list)

    def resource(self, type_: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(type_, {})


def load_terraform(directory: Path) -> Terraform:
    tf = Terraform()
    for path in sorted(directory.glob("*.tf")):
        with path.open() as f:
            doc = _plain(hcl2.load(f))
        for kind, target in (("resource", tf.resources), ("data", tf.data)):
            for block in doc.get(kind, []):
                for type_, named in block.items():
                    if type_ != "__comments__":
                        target.setdefault(type_, {}).update(named)
        for block in doc.get("variable", []):
            tf.variables.update(block)
        for block in doc.get("output", []):
            tf.outputs.update(block)
        for block in doc.get("locals", []):
            tf.locals.update({k: v for k, v in block.items() if k != "__comments__"})
        tf.terraform += doc.get("terraform", [])
    return tf


def one(block: Any) -> dict[str, Any]:
    """A nested block (python-hcl2 gives a list of one dict)."""
    assert isinstance(block, list) and len(block) == 1, block
    assert isinstance(block[0], dict)
    return block[0]
