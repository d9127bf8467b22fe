"""The import contracts of .importlinter, run as .ci/run runs them (`lint-imports`).

The layers contract waits for the restructuring of issue 14 to land (.ci/run checks it); the
contracts that hold already are kept here so that a change breaking them fails the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_tools_protos_and_clients_stay_at_the_edges() -> None:
    contracts = ("tools", "protos", "clients")
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *(f"--contract={c}" for c in contracts)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout
