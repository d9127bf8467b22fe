"""The exit status of every client command (verify, identify, check-liveness, kiosk, enroll,
risk, calibration, health): one scheme, so a script can tell a decision from a failure.

A decision's outcome comes apart from errors: a DECLINE is an answer (1), a request the
service refused is the caller's to fix (4), and a service that cannot answer is retried (5).
"""

from __future__ import annotations

OK = 0  # APPROVE, or the command did what it was asked
DECLINE = 1  # the decision is DECLINE
USAGE = 2  # bad options or arguments (argparse's own status)
REVIEW = 3  # the decision is REVIEW: a person must look
REFUSED = 4  # the service refused the request (bad input, no face, low quality, not found,
# already exists, not allowed, over a limit), or a local file could not be read
UNAVAILABLE = 5  # no answer: the service is unreachable, not serving, overran or failed

OUTCOMES = {"APPROVE": OK, "REVIEW": REVIEW, "DECLINE": DECLINE}

# Statuses after which the same request may succeed later, unchanged.
# (Status code names: this module is imported to build --help, without grpc.)
_SERVICE_SIDE = {
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "CANCELLED", "ABORTED",
    "DATA_LOSS", "UNIMPLEMENTED",
}  # fmt: skip

# For --help: the scheme as a man page's EXIT STATUS section.
HELP = """\
exit status:
  0  APPROVE, or the command succeeded
  1  DECLINE
  2  usage error (bad options or arguments)
  3  REVIEW
  4  refused by the service (bad input, no face, low quality, not found, already exists,
     not allowed, over a limit), or a file that cannot be read
  5  no answer: the service is unreachable, not serving, overran or failed"""


def for_outcome(outcome: str) -> int:
    """The status of a decision's outcome name (an unset outcome counts as a failure)."""
    return OUTCOMES.get(outcome, UNAVAILABLE)


def for_error(status: str) -> int:
    """The status of a failed call, from its gRPC status code name."""
    return UNAVAILABLE if status in _SERVICE_SIDE else REFUSED
