"""The web console over a real mutual-TLS server: certificates, roles, CSRF, headers, audited
actions delivered to a fraud-engine sink, and (with Debian's chromium and Playwright) a
browser that finds a REVIEW decision made by a real Verify through gRPC.

Set FACEGUARD_CONSOLE_SCREENSHOTS=docs to write the README's screenshots (docs/console-*.png)
from the browser test."""

from __future__ import annotations

import http.client
import os
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import (
    consent,
    image,
    mtls_settings,
    people_with,
    sink_risk,
    tls_channel,
    with_sections,
)

from faceguard.v1 import (
    common_pb2,
    enrollment_pb2,
    enrollment_pb2_grpc,
    verification_pb2,
    verification_pb2_grpc,
)
from service.api.console.pages import _csv_cell
from service.api.console.serving import ssl_context
from service.api.server import Running
from service.config import Settings, SettingsError
from service.risk.policy import DEFAULT_POLICY
from service.store.tables import event_table
from tools.fraud_sink import RunningSink, stored_event_ids

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


def review_policy(folder: Path) -> Path:
    """The shipped policy, but every face is `low quality` (score 30 = review_at): each
    matching verify ends in REVIEW; three failures lock a device out."""
    text = DEFAULT_POLICY.read_text()
    text = text.replace("min_quality = 40.0", "min_quality = 100.0")
    text = text.replace("device_failures = 10 ", "device_failures = 3 ")
    path = folder / "policy.toml"
    path.write_text(text.replace('version = "default-', 'version = "console-test-'))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def served(folder: Path, pki: Path, sink: RunningSink, serve) -> Running:
    settings = mtls_settings(folder / "data", pki)
    risk = sink_risk(review_policy(folder), folder / "hmac.key", sink.port)
    return serve(with_sections(settings, risk=risk, console={"enabled": True, "port": 0}))


@pytest.fixture(scope="module")
def review(served: Running, pki: Path, shared_data: Path) -> dict[str, str]:
    """A customer enrolled and verified through gRPC with kiosk K-001: a REVIEW decision."""
    ((person, images),) = people_with(shared_data, minimum=3, count=1)
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
            enrollment_pb2.EnrollRequest(
                customer_id=person, images=[image(images[0])], consent=consent()
            ),
            timeout=60,
        )
    with tls_channel(served.port, pki, "kiosk-K-001") as channel:
        decision = (
            verification_pb2_grpc.FaceVerificationStub(channel)
            .Verify(
                verification_pb2.VerifyRequest(customer_id=person, frames=[image(images[1])]),
                timeout=60,
            )
            .decision
        )
    assert decision.outcome == common_pb2.REVIEW, decision
    return {"customer": person, "event_id": decision.event_id}


def client_context(pki: Path, client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client is not None:
        context.load_cert_chain(pki / f"{client}.pem", pki / f"{client}.key")
    return context


def fetch(
    served: Running, pki: Path, client: str | None, path: str, form: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, str]:
    """One request to the console as `client` (no redirects followed)."""
    assert served.console is not None
    connection = http.client.HTTPSConnection(
        "127.0.0.1", served.console.port, context=client_context(pki, client), timeout=30
    )
    try:
        if form is None:
            connection.request("GET", path)
        else:
            body = "&".join(f"{k}={v}" for k, v in form.items())
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.headers, reply.read().decode()
    finally:
        connection.close()


def csrf_of(served: Running, pki: Path, client: str) -> str:
    """The client's CSRF token, as every page carries it."""
    status, _, page = fetch(served, pki, client, "/")
    match = CSRF.search(page)
    assert status == 200 and match is not None
    return match.group(1)


def events_of_type(served: Running, kind: str) -> list[dict[str, object]]:
    import json

    from sqlalchemy import select

    with served.engine.gallery.store.connect() as conn:
        rows = conn.execute(select(event_table).where(event_table.c.type == kind)).all()
    return [{"event_id": r.event_id, **json.loads(r.payload)} for r in rows]


def wait_delivered(event_id: str, db: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while event_id not in stored_event_ids(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert event_id in stored_event_ids(db), "the console action did not reach the sink"


# ---- without a browser --------------------------------------------------------------


def test_no_client_certificate_is_refused_by_tls(served: Running, pki: Path) -> None:
    with pytest.raises((ssl.SSLError, OSError)):
        fetch(served, pki, None, "/")


def test_a_certificate_without_a_console_role_is_forbidden(served: Running, pki: Path) -> None:
    for client in ("kiosk-K-001", "enrollment-desk", "investigator"):
        assert fetch(served, pki, client, "/")[0] == 403
    # Audited like a gRPC call refused for its role: a declined CALL of the kiosk's device.
    (refusal,) = [e for e in events_of_type(served, "CALL") if e.get("client") == "kiosk-K-001"]
    assert refusal["method"] == "console GET /"
    assert refusal["reason_codes"] == ["ROLE_NOT_ALLOWED"]


def test_analyst_reads_but_admin_pages_and_actions_are_forbidden(
    served: Running, pki: Path
) -> None:
    for path in ("/", "/decisions", "/lockouts", "/decisions.csv"):
        assert fetch(served, pki, "analyst", path)[0] == 200, path
    for path in ("/lists", "/customers", "/customers?customer_id=x"):
        assert fetch(served, pki, "analyst", path)[0] == 403, path
    # Refused for the role before the form is read, whatever token it carries.
    form = {"list": "DEVICE_BLACKLIST", "subject": "K-9", "reason": "r", "case_ref": "c"}
    assert fetch(served, pki, "analyst", "/lists/add", form | {"csrf": "x"})[0] == 403
    assert fetch(served, pki, "analyst", "/lockouts/lift", {"device_id": "K-1"})[0] == 403
    for path in ("/", "/lists", "/customers", "/lockouts"):
        assert fetch(served, pki, "admin", path)[0] == 200, path


def test_every_answer_carries_the_security_headers(served: Running, pki: Path) -> None:
    for client, path in (("admin", "/"), ("analyst", "/lists"), ("admin", "/nowhere")):
        _, headers, _ = fetch(served, pki, client, path)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_a_post_without_its_csrf_token_is_refused(served: Running, pki: Path) -> None:
    form = {"list": "DEVICE_BLACKLIST", "subject": "K-csrf", "reason": "r", "case_ref": "c"}
    assert fetch(served, pki, "admin", "/lists/add", form)[0] == 403
    assert fetch(served, pki, "admin", "/lists/add", form | {"csrf": "0" * 64})[0] == 403
    # Another client's token is useless: it is bound to the certificate it was made for.
    other = {"csrf": csrf_of(served, pki, "admin")}
    assert fetch(served, pki, "admin", "/lists/add", form | other)[0] == 303
    listed = fetch(served, pki, "admin", "/lists")[2]
    assert "K-csrf" in listed


def test_an_admin_list_change_is_audited_and_reaches_the_fraud_engine(
    served: Running, pki: Path, folder: Path
) -> None:
    token = csrf_of(served, pki, "admin")
    form = {"csrf": token, "list": "DEVICE_BLACKLIST", "subject": "K-777", "reason": "stolen",
            "case_ref": "CASE-42"}  # fmt: skip
    status, headers, _ = fetch(served, pki, "admin", "/lists/add", form)
    assert status == 303
    event_id = headers["Location"].split("done=")[1]
    (action,) = [e for e in events_of_type(served, "CONSOLE_ACTION") if e["event_id"] == event_id]
    assert action["action"] == "DEVICE_BLACKLIST_ADD" and action["operator"] == "admin"
    assert action["case_ref"] == "CASE-42" and action["operator_certificate"]
    wait_delivered(event_id, folder / "sink.db")
    page = fetch(served, pki, "admin", "/lists")[2]
    assert "K-777" in page and "CASE-42" in page
    removed = {"csrf": token, "list": "DEVICE_BLACKLIST", "subject": "K-777", "reason": "found"}
    assert fetch(served, pki, "admin", "/lists/remove", removed)[0] == 303
    assert "K-777" not in fetch(served, pki, "admin", "/lists")[2]
    # Removing what is not listed is a page that says so, not a crash.
    status, _, page = fetch(served, pki, "admin", "/lists/remove", removed)
    assert status == 404 and "NOT_LISTED" in page


def test_bad_filters_and_unknown_decisions_are_refused_plainly(served: Running, pki: Path) -> None:
    assert fetch(served, pki, "analyst", "/decisions?outcome=MAYBE")[0] == 400
    assert fetch(served, pki, "analyst", "/decisions?reason=a%27b")[0] == 400
    assert fetch(served, pki, "analyst", "/decisions?since=yesterday")[0] == 400
    assert fetch(served, pki, "analyst", "/decisions?before=x")[0] == 400
    assert fetch(served, pki, "analyst", "/decisions?before=" + "9" * 40)[0] == 400
    assert fetch(served, pki, "analyst", "/decisions?before=%C2%B2")[0] == 400
    assert fetch(served, pki, "analyst", "/decisions/" + str(uuid.uuid4()))[0] == 404
    assert fetch(served, pki, "analyst", "/decisions/not-an-event")[0] == 400
    status, _, page = fetch(served, pki, "analyst", "/decisions?customer_id=%3Cscript%3E")
    assert status == 200 and "<script>" not in page and "&lt;script&gt;" in page


def test_csv_cells_never_start_a_formula() -> None:
    assert _csv_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _csv_cell("-1+2") == "'-1+2"
    assert _csv_cell("K-001") == "K-001" and _csv_cell(None) == ""


def test_the_console_needs_certificates_to_start(tmp_path: Path) -> None:
    settings = Settings(console={"enabled": True}, storage={"data_dir": tmp_path})
    with pytest.raises(SettingsError, match="client CA"):
        ssl_context(settings)


def test_a_review_decision_is_listed_shown_and_exported(
    served: Running, pki: Path, review: dict[str, str]
) -> None:
    page = fetch(served, pki, "analyst", "/decisions?outcome=REVIEW")[2]
    assert review["event_id"] in page
    # The enrolment was a decision too (the same low_quality rule sent it to review).
    assert "<td>ENROLL</td>" in page
    assert review["event_id"] not in fetch(served, pki, "analyst", "/decisions?outcome=DECLINE")[2]
    assert review["event_id"] in fetch(served, pki, "analyst", "/decisions?reason=LOW_QUALITY")[2]
    status, _, detail = fetch(served, pki, "analyst", f"/decisions/{review['event_id']}")
    assert status == 200
    for shown in ("low_quality", "LOW_QUALITY", "console-test-", "review at 30.0", "embedder"):
        assert shown in detail, shown
    status, headers, text = fetch(served, pki, "analyst", "/decisions.csv?outcome=REVIEW")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert review["event_id"] in text and text.startswith("occurred_at,event_id")
    exports = events_of_type(served, "CONSOLE_ACTION")
    assert any(e["action"] == "EXPORT_DECISIONS" and e["operator"] == "analyst" for e in exports)


def test_admin_sees_a_customer_and_erases_them_only_when_confirmed(
    served: Running, pki: Path, review: dict[str, str]
) -> None:
    customer = review["customer"]
    page = fetch(served, pki, "admin", f"/customers?customer_id={customer}")[2]
    assert "kiosk verification" in page and "VERIFY REVIEW" in page
    token = csrf_of(served, pki, "admin")
    form = {"csrf": token, "customer_id": customer, "confirm": "someone-else", "reason": "r"}
    status, _, page = fetch(served, pki, "admin", "/customers/erase", form)
    assert status == 400 and "NOT_CONFIRMED" in page
    assert served.engine.gallery.store.has_customer(customer)


@pytest.fixture(scope="module")
def lockout(served: Running, pki: Path, shared_data: Path, review: dict[str, str]) -> str:
    """Kiosk K-002 locked out: three faces of someone else declined against the customer."""
    (_, (_, faces)) = people_with(shared_data, minimum=3, count=2)
    with tls_channel(served.port, pki, "kiosk-K-002") as channel:
        stub = verification_pb2_grpc.FaceVerificationStub(channel)
        for face in faces:
            request = verification_pb2.VerifyRequest(
                customer_id=review["customer"], frames=[image(face)]
            )
            assert stub.Verify(request, timeout=60).decision.outcome == common_pb2.DECLINE
    assert served.engine.risk is not None and served.engine.risk.velocity.device_locked("K-002")
    return "K-002"


def test_review_claims_are_exclusive_and_a_resolution_is_audited(
    served: Running, pki: Path, shared_data: Path, review: dict[str, str], folder: Path
) -> None:
    """A second REVIEW decision: an admin claims it, the analyst can neither claim nor
    resolve it, the admin resolves it with a note (REVIEW_RESOLVED, delivered)."""
    ((person, images),) = people_with(shared_data, minimum=3, count=1)
    with tls_channel(served.port, pki, "kiosk-K-001") as channel:
        second = (
            verification_pb2_grpc.FaceVerificationStub(channel)
            .Verify(
                verification_pb2.VerifyRequest(customer_id=person, frames=[image(images[2])]),
                timeout=60,
            )
            .decision
        )
    assert second.outcome == common_pb2.REVIEW
    queue = fetch(served, pki, "analyst", "/reviews")[2]
    assert second.event_id in queue
    admin, analyst = csrf_of(served, pki, "admin"), csrf_of(served, pki, "analyst")
    claim = f"/reviews/{second.event_id}/claim"
    assert fetch(served, pki, "admin", claim, {})[0] == 403  # no CSRF token
    assert fetch(served, pki, "admin", claim, {"csrf": admin})[0] == 303
    status, _, page = fetch(served, pki, "analyst", claim, {"csrf": analyst})
    assert status == 409 and "REVIEW_CLAIMED" in page
    resolve = f"/reviews/{second.event_id}/resolve"
    form = {"resolution": "DECLINE", "note": "not the customer"}
    status, _, page = fetch(served, pki, "analyst", resolve, form | {"csrf": analyst})
    assert status == 409 and "REVIEW_NOT_CLAIMED" in page
    status, _, page = fetch(served, pki, "admin", resolve, {"csrf": admin, "resolution": "MAYBE",
                                                            "note": "x"})  # fmt: skip
    assert status == 400 and "INVALID_RESOLUTION" in page
    status, headers, _ = fetch(served, pki, "admin", resolve, form | {"csrf": admin})
    assert status == 303
    resolution = headers["Location"].split("done=")[1]
    (event,) = [e for e in events_of_type(served, "REVIEW_RESOLVED") if e["event_id"] == resolution]
    assert event["analyst"] == "admin" and event["resolution"] == "DECLINE"
    wait_delivered(resolution, folder / "sink.db")
    claims = [e for e in events_of_type(served, "CONSOLE_ACTION") if e["action"] == "REVIEW_CLAIM"]
    assert any(e["reviewed_event_id"] == second.event_id for e in claims)
    assert second.event_id not in fetch(served, pki, "analyst", "/reviews")[2]


# ---- in a real browser ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian package chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_as(browser, served: Running, pki: Path) -> Iterator[object]:
    """A browser page holding `client`'s certificate (None: no certificate); every
    Content-Security-Policy violation the page reports fails the test."""
    assert served.console is not None
    contexts, violations = [], []

    def page_for(client: str | None):
        certificates = [] if client is None else [{
            "origin": served.console.url.rstrip("/"), "certPath": str(pki / f"{client}.pem"),
            "keyPath": str(pki / f"{client}.key"),
        }]  # fmt: skip
        context = browser.new_context(
            client_certificates=certificates, ignore_https_errors=True,
            viewport={"width": 1280, "height": 860},
        )  # fmt: skip
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: violations.append(m.text) if "Content Security" in m.text
                else None)  # fmt: skip
        return page

    yield page_for
    for context in contexts:
        context.close()
    assert not violations, violations


def screenshot(page, name: str) -> None:
    """The README's screenshots (of a page, or of one element of it), when
    FACEGUARD_CONSOLE_SCREENSHOTS names their folder."""
    folder = os.environ.get("FACEGUARD_CONSOLE_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"console-{name}.png"))


def test_browser_analyst_finds_a_review_decision_and_resolves_it(
    open_as, served: Running, review: dict[str, str], folder: Path
) -> None:
    page = open_as("analyst")
    page.goto(served.console.url)
    assert page.locator("#operator").inner_text() == "analyst"
    assert page.locator("svg rect").count() >= 1  # the hourly chart has the decision
    page.get_by_role("link", name="Reviews").click()
    assert review["event_id"] in page.locator("#reviews").inner_html()
    screenshot(page, "reviews")
    page.get_by_role("link", name="Decisions").click()
    page.locator("select[name=outcome]").select_option("REVIEW")
    page.get_by_role("button", name="Filter").click()
    assert "outcome=REVIEW" in page.url
    screenshot(page, "decisions")
    page.locator(f"a[href='/decisions/{review['event_id']}']").click()
    assert page.locator("#event-id").inner_text() == review["event_id"]
    assert "LOW_QUALITY" in page.locator("#reasons").inner_text()
    assert page.locator("#rules tr.fired").count() >= 1
    screenshot(page, "decision")
    page.get_by_role("button", name="Claim this review").click()
    assert "Claimed by analyst" in page.locator("#review-state").inner_text()
    page.get_by_label("Approve").check()
    page.locator("#resolve textarea[name=note]").fill("Customer known to branch staff; ID seen")
    screenshot(page.locator("#review"), "review")
    page.get_by_role("button", name="Resolve").click()
    assert "Resolved APPROVE by analyst" in page.locator("#review-state").inner_text()
    resolution = page.locator("#resolution-event").inner_text()
    (event,) = [e for e in events_of_type(served, "REVIEW_RESOLVED") if e["event_id"] == resolution]
    assert event["analyst"] == "analyst" and event["reviewed_event_id"] == review["event_id"]
    wait_delivered(resolution, folder / "sink.db")
    page.reload()
    assert page.locator("#resolution-delivery").inner_text() == "DELIVERED"
    screenshot(page.locator("#review"), "resolved")
    page.get_by_role("link", name="Reviews").click()
    assert review["event_id"] not in page.content()  # resolved: out of the queue


def test_browser_analyst_cannot_reach_admin_pages(open_as, served: Running) -> None:
    page = open_as("analyst")
    page.goto(served.console.url)
    assert page.get_by_role("link", name="Lists").count() == 0
    for path in ("lists", "customers"):
        assert page.goto(served.console.url + path).status == 403


def test_browser_form_without_its_csrf_token_is_refused(open_as, served: Running) -> None:
    page = open_as("admin")
    page.goto(served.console.url + "lists")
    page.locator("#add-entry input[name=csrf]").evaluate("input => input.remove()")
    page.locator("#add-entry input[name=subject]").fill("K-404")
    page.locator("#add-entry input[name=reason]").fill("test")
    page.locator("#add-entry input[name=case_ref]").fill("CASE-1")
    with page.expect_response(lambda r: r.url.endswith("/lists/add")) as answer:
        page.get_by_role("button", name="Add").click()
    assert answer.value.status == 403
    assert "CSRF" in page.content()
    page.goto(served.console.url + "lists")
    assert "K-404" not in page.content()


def test_browser_without_a_certificate_is_refused(open_as, served: Running) -> None:
    from playwright.sync_api import Error

    page = open_as(None)
    with pytest.raises(Error):
        page.goto(served.console.url, timeout=15_000)


def test_browser_admin_lifts_a_lockout_and_manages_lists(
    open_as, served: Running, lockout: str, folder: Path
) -> None:
    page = open_as("admin")
    page.goto(served.console.url + "lockouts")
    row = page.locator("#lockouts tr", has_text=lockout)
    assert "failed attempt" in row.inner_text()
    screenshot(page, "lockouts")
    row.locator("input[name=reason]").fill("customer called, case 17")
    row.get_by_role("button", name="Lift").click()
    event_id = page.locator("#done code").inner_text()
    assert lockout not in page.locator("#lockouts").inner_text()
    (action,) = [e for e in events_of_type(served, "CONSOLE_ACTION") if e["event_id"] == event_id]
    assert action["action"] == "LOCKOUT_LIFT" and action["operator"] == "admin"
    wait_delivered(event_id, folder / "sink.db")
    page.goto(served.console.url + "lists")
    form = page.locator("#add-entry")
    form.locator("select[name=list]").select_option("CUSTOMER_BLOCKLIST")
    form.locator("input[name=subject]").fill("mallory")
    form.locator("input[name=reason]").fill("synthetic identity")
    form.locator("input[name=case_ref]").fill("FR-2026-118")
    form.get_by_role("button", name="Add").click()
    assert "FR-2026-118" in page.locator("#list-customer_blocklist").inner_text()
    screenshot(page, "lists")


def test_browser_admin_sees_a_customer_and_the_dashboard(
    open_as, served: Running, review: dict[str, str], lockout: str
) -> None:
    page = open_as("admin")
    page.goto(served.console.url + "customers")
    page.locator("input[name=customer_id]").fill(review["customer"])
    page.get_by_role("button", name="Look up").click()
    assert "kiosk verification" in page.locator("#consent").inner_text()
    assert page.locator("#templates").inner_text().startswith("1 ")
    screenshot(page, "customer")
    page.get_by_role("link", name="Dashboard").click()
    assert int(page.locator("#decline-count").inner_text()) >= 3  # the lockout's declines
    screenshot(page, "dashboard")


def test_admin_erases_a_confirmed_customer_and_the_erasure_is_audited(
    served: Running, pki: Path, shared_data: Path, folder: Path
) -> None:
    (_, _, (person, images)) = people_with(shared_data, minimum=3, count=3)
    with tls_channel(served.port, pki, "enrollment-desk") as channel:
        enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(
            enrollment_pb2.EnrollRequest(
                customer_id=person, images=[image(images[0])], consent=consent()
            ),
            timeout=60,
        )
    form = {"csrf": csrf_of(served, pki, "admin"), "customer_id": person, "confirm": person,
            "reason": "customer withdrew consent"}  # fmt: skip
    status, headers, _ = fetch(served, pki, "admin", "/customers/erase", form)
    assert status == 303
    assert not served.engine.gallery.store.has_customer(person)
    event_id = headers["Location"].split("done=")[1]
    (action,) = [e for e in events_of_type(served, "CONSOLE_ACTION") if e["event_id"] == event_id]
    assert action["action"] == "ERASE" and action["operator"] == "admin"
    assert action["audit_event"] in {e["event_id"] for e in events_of_type(served, "DELETE")}
    wait_delivered(event_id, folder / "sink.db")
    status, _, page = fetch(served, pki, "admin", f"/customers?customer_id={person}")
    assert status == 404 and "CUSTOMER_NOT_FOUND" in page
