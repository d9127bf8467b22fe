"""The README's Errors table lists every ErrorInfo reason the service raises, with its status.

Reasons are read from the code, not kept in a second list: the first argument of each
`FaceguardError` subclass, `rich_status` or `exhausted` call under service/, and the reasons
`check_count` and `require_text` build from a name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from service.api.status import STATUS

ROOT = Path(__file__).resolve().parent.parent
STATUS_OF = {cls.__name__: code.name for cls, code in STATUS.items()}
# Reasons no caller can provoke: LiftLockout's operator is the caller's certificate name.
NOT_CALLER_INPUT = {"INVALID_OPERATOR"}


def _constant(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def raised_reasons() -> set[tuple[str, str]]:
    """(reason, status name) of every refusal under service/ (evaluation's CLI excluded)."""
    found = set()
    for path in (ROOT / "service").rglob("*.py"):
        if "evaluation" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            first = _constant(node.args[0])
            if name in STATUS_OF and first:
                found.add((first, STATUS_OF[name]))
            elif name == "rich_status" and len(node.args) > 1 and _constant(node.args[1]):
                found.add((_constant(node.args[1]), node.args[0].attr))  # type: ignore[attr-defined]
            elif name == "exhausted" and first:
                found.add((first, "RESOURCE_EXHAUSTED"))
            elif name == "require_text" and first:
                found.add((f"INVALID_{first.upper()}", "INVALID_ARGUMENT"))
            elif name == "check_count" and len(node.args) > 2 and _constant(node.args[2]):
                what = _constant(node.args[2]).upper()  # type: ignore[union-attr]
                found |= {
                    (f"NO_{what}", "INVALID_ARGUMENT"),
                    (f"TOO_MANY_{what}", "RESOURCE_EXHAUSTED"),
                }
    return {(reason, status) for reason, status in found if reason not in NOT_CALLER_INPUT}


def documented_reasons() -> set[tuple[str, str]]:
    """(reason, status) pairs of the README's Errors table."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Errors") :].split("\n## ", 1)[0]
    pairs = set()
    for line in table.splitlines():
        row = re.match(r"\| `([A-Z_]+)`(?: / `([A-Z_]+)`)? \| (.*) \|$", line)
        if not row:
            continue
        first, second, cell = row.groups()
        for i, part in enumerate(cell.split(" / ") if second else [cell]):
            status = second if i else first
            pairs |= {(code, status) for code in re.findall(r"`([A-Z][A-Z0-9_]+)`", part)}
    return pairs


def test_every_raised_reason_is_in_the_errors_table_with_its_status() -> None:
    raised = raised_reasons()
    assert {"CUSTOMER_NOT_FOUND", "RATE_LIMITED", "INVALID_REASON"} <= {r for r, _ in raised}
    missing = sorted(raised - documented_reasons())
    assert not missing, f"reasons raised but not in the README's Errors table: {missing}"
