"""Domain values every layer may use (a leaf: it imports nothing of the service).

The three outcomes of a decision: the risk policy orders them (`risk.policy.stricter`), the use
cases reach them, the API names them.
"""

from __future__ import annotations

APPROVE, REVIEW, DECLINE = "APPROVE", "REVIEW", "DECLINE"
