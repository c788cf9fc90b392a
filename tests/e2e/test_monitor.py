"""The web monitor in a real browser: login, live updates, failures, retry, DAG, convergence,
isolation between users. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips these tests (and fails them in CI)
    expect = None

pytestmark = pytest.mark.browser

CAMPAIGN = """
import json, os, pathlib, sys, time
from tasklift import Workflow, WorkFailed, work

@work
def objective(x, delay=0.0):
    time.sleep(delay)
    print("objective at", x)
    return {"loss": round((x - 5) ** 2 / 10 + 0.1, 3), "x": x}

@work(retries=0)
def flaky(x, marker):
    m = pathlib.Path(marker) / str(x)
    if x == 1 and not m.exists():
        m.parent.mkdir(parents=True, exist_ok=True)
        m.touch()
        raise ValueError(f"first try of job {x} fails on purpose")
    print("ran", x, "again" if m.exists() else "once")
    return x * 1.5

def search(iterations, per_iteration, delay):
    best = None
    for it in range(iterations):
        xs = [it * per_iteration + i for i in range(per_iteration)]
        for r in objective(delay=delay, group_kwargs=[{"x": x} for x in xs]):
            best = r["loss"] if best is None else min(best, r["loss"])
    return {"best": best}

def fragile(marker):
    try:
        flaky(group_kwargs=[{"x": i, "marker": marker} for i in range(4)])
    except WorkFailed as exc:
        return {"failed": sorted(f.kwargs["x"] for f in exc.failures)}
    return {"failed": []}

if __name__ == "__main__":
    fn = {"search": search, "fragile": fragile}[sys.argv[1]]
    wf = Workflow(func=fn, service=os.environ["TASKLIFT_SERVICE"], name=sys.argv[2])
    print("RESULT", json.dumps(wf.run(*json.loads(sys.argv[3]))))
    print("WORKFLOW", wf.workflow_id)
"""


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir(parents=True, exist_ok=True)
    (root / "campaign.py").write_text(textwrap.dedent(CAMPAIGN))
    return root


def _start(server, token: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    script = _project(tmp_path) / "campaign.py"
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=server.env(token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(re.search(r"^WORKFLOW (\d+)$", out, re.M)[1])


def _run(server, token: str, tmp_path: Path, *args: str) -> int:
    return _finish(_start(server, token, tmp_path, *args))


def _login(page, token: str) -> None:
    page.goto("/")
    assert "/login" in page.url  # unauthenticated pages send you to the form
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def _count(page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", ""))


def test_login_errors_and_header_auth(server, page, screenshot):
    page.goto("/workflows/1")
    assert "/login?next=%2Fworkflows%2F1" in page.url
    page.get_by_label("API token").fill("tl_1_not-a-real-token")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").is_visible()
    assert "invalid API token" in page.get_by_role("alert").inner_text()
    screenshot(page, "login-refused")

    token = server.token("carol")
    with httpx.Client(base_url=server.url) as client:
        listing = client.get("/", headers={"Authorization": f"Bearer {token}"})
        assert listing.status_code == 200 and "Workflows" in listing.text
        assert "frame-ancestors 'none'" in listing.headers["content-security-policy"]
        login = client.post("/login", data={"token": token, "next": "//evil.example/"})
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie

    _login(page, token)
    assert page.get_by_role("heading", name="Workflows").is_visible()
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/login"))
    page.goto("/")
    assert "/login" in page.url


def test_running_workflow_updates_live_then_dag_and_convergence(server, page, screenshot, tmp_path):
    token = server.token("alice")
    proc = _start(server, token, tmp_path, "search", "live-search", "[3, 4, 0.8]")
    try:
        with server.client(token) as api:
            deadline = time.monotonic() + 60
            running = []
            while not running:
                assert time.monotonic() < deadline, "the workflow did not start"
                running = api.get("/api/v1/workflows", params={"name": "live-search"}).json()
                running = running["data"]
                time.sleep(0.1)
        wf_id = running[0]["id"]
        _login(page, token)
        row = page.locator(f"tr[data-workflow='{wf_id}']")
        assert row.is_visible() and "running" in row.inner_text()
        page.goto(f"/workflows/{wf_id}")
        page.evaluate("window.__sameDocument = true")
        first = _count(page, "#wf-progress [data-count=finished]")
        page.wait_for_function(
            "(first) => Number(document.querySelector('#wf-progress [data-count=finished]')"
            ".textContent.replace(/,/g, '')) > first",
            arg=first,
            timeout=30_000,
        )
        screenshot(page, "workflow-live")
        assert "running" in page.locator("#wf-status").inner_text()
        expect(page.locator("#wf-status")).to_contain_text("finished", timeout=60_000)
        assert page.evaluate("window.__sameDocument") is True  # updated without a reload
        assert _count(page, "#wf-progress [data-count=finished]") == 12
    finally:
        wf_done = _finish(proc)
    assert wf_done == wf_id
    page.reload()
    assert page.locator(".live-root").get_attribute("data-running") == "0"

    # the DAG: one linked, labelled node per work, arrows in submission order
    nodes = page.locator("svg.dag a.dag-node")
    assert nodes.count() == 3
    assert page.locator("svg.dag line.dag-edge").count() == 2
    assert "finished" in nodes.first.get_attribute("aria-label")
    screenshot(page, "workflow-dag")
    nodes.nth(1).focus()
    page.keyboard.press("Enter")  # keyboard reachable
    page.wait_for_url(re.compile(r"/works/\d+$"))
    assert page.get_by_role("heading", name=re.compile("objective")).is_visible()
    assert page.locator("svg.histogram rect.hist-bar").count() >= 1
    screenshot(page, "work")

    # convergence: 12 points, best so far per iteration, min and max
    page.goto(f"/workflows/{wf_id}/convergence")
    assert page.locator("svg.convergence circle.pt").count() == 12
    assert page.locator("#iterations tbody tr").count() == 3
    assert page.locator("#best-value").inner_text() == "0.1"
    assert page.get_by_label("Field of the results").input_value() == "loss"
    screenshot(page, "convergence")
    page.get_by_label("Field of the results").select_option("x")
    page.get_by_label("higher (max)").check()
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"mode=max"))
    assert page.locator("#best-value").inner_text() == "11"


def test_failed_job_traceback_and_retry(server, page, screenshot, tmp_path):
    token = server.token("dave")
    wf_id = _run(server, token, tmp_path, "fragile", "fragile", f'["{tmp_path / "markers"}"]')
    _login(page, token)
    page.goto(f"/workflows/{wf_id}")
    page.locator("#works").get_by_role("link", name="flaky").click()
    page.get_by_role("link", name="failed (1)").click()
    assert page.locator("#jobs tbody tr").count() == 1
    assert "ValueError: first try of job 1 fails on purpose" in page.locator("#jobs").inner_text()
    screenshot(page, "work-failed")
    page.locator("#jobs tbody tr a").first.click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_url = page.url
    traceback = page.locator("#traceback").inner_text()
    assert "Traceback (most recent call last)" in traceback
    assert "raise ValueError" in traceback and "fails on purpose" in traceback
    assert "failed" in page.locator("#job-status").inner_text()
    screenshot(page, "job-traceback")

    page.go_back()
    page.get_by_role("link", name=re.compile(r"^all")).click()
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.evaluate("window.__sameDocument = true")
    page.get_by_role("button", name="Retry failed jobs").click()
    expect(page.locator("#work-status")).to_contain_text("finished", timeout=30_000)
    assert dialogs and "failed jobs" in dialogs[0]
    assert page.evaluate("window.__sameDocument") is True
    assert _count(page, "#work-progress [data-count=failed]") == 0
    assert _count(page, "#work-progress [data-count=finished]") == 4
    assert page.get_by_role("button", name="Retry failed jobs").is_disabled()
    screenshot(page, "work-retried")
    page.goto(job_url)
    assert "finished" in page.locator("#job-status").inner_text()
    assert "ran 1 again" in page.locator("#stdout").inner_text()
    assert page.locator("#result").inner_text() == "1.5"


def test_other_users_workflows_are_invisible(server, page, browser, screenshot, tmp_path):
    erin, frank = server.token("erin"), server.token("frank")
    theirs = _run(server, frank, tmp_path, "search", "franks-secret", "[1, 2, 0]")
    mine = _run(server, erin, tmp_path / "erin", "search", "erins-own", "[1, 2, 0]")
    with server.client(frank) as api:
        work_id = api.get(f"/api/v1/workflows/{theirs}/works").json()["data"][0]["id"]
        job_id = api.get(f"/api/v1/works/{work_id}/jobs").json()["data"][0]["id"]
    _login(page, erin)
    page.get_by_label("Name contains").fill("s")
    page.get_by_role("button", name="Filter").click()
    assert page.locator(f"tr[data-workflow='{mine}']").is_visible()
    assert page.locator(f"tr[data-workflow='{theirs}']").count() == 0
    assert "franks-secret" not in page.content()
    assert page.get_by_label("User").count() == 0  # the user filter is for admins
    for path in (
        f"/workflows/{theirs}",
        f"/works/{work_id}",
        f"/jobs/{job_id}",
        f"/workflows/{theirs}/convergence",
    ):
        response = page.goto(path)
        assert response.status == 404, path
        assert page.get_by_role("heading", name=re.compile("Not found")).is_visible()
        assert "franks-secret" not in page.content()
    screenshot(page, "not-found")

    # an admin sees both, with a user filter; a narrow window still reads as a list of cards
    admin = browser.new_context(base_url=server.url, viewport={"width": 390, "height": 844})
    try:
        tab = admin.new_page()
        _login(tab, server.token("root", admin=True))
        tab.get_by_label("User").fill("frank")
        tab.get_by_role("button", name="Filter").click()
        assert tab.locator(f"tr[data-workflow='{theirs}']").is_visible()
        assert tab.locator(f"tr[data-workflow='{mine}']").count() == 0
        width = tab.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the narrow page scrolls sideways ({width} px)"
        screenshot(tab, "admin-narrow")
    finally:
        admin.close()


def test_cancel_button_works_and_another_sites_page_cannot_cancel(server, page, tmp_path):
    token = server.token("gina")
    proc = _start(server, token, tmp_path, "search", "to-cancel", "[1, 2, 60]")
    try:
        with server.client(token) as api:
            deadline = time.monotonic() + 60
            works: list[dict] = []
            while not works:
                assert time.monotonic() < deadline, "the work did not start"
                wfs = api.get("/api/v1/workflows", params={"name": "to-cancel"}).json()["data"]
                if wfs:
                    works = api.get(f"/api/v1/workflows/{wfs[0]['id']}/works").json()["data"]
                time.sleep(0.1)
            work_id = works[0]["id"]
            assert works[0]["status"] == "running"
            _login(page, token)

            # a page of another origin on the same site (127.0.0.1, another port: SameSite
            # lets the cookie through) posts a form to the cancel endpoint
            evil = "http://127.0.0.1:47123/evil"
            form = (
                f'<form method="post" action="{server.url}/api/v1/works/{work_id}/cancel">'
                "</form><script>document.forms[0].submit()</script>"
            )
            page.route(evil, lambda route: route.fulfill(body=form, content_type="text/html"))
            with page.expect_response(re.compile(r"/cancel$")) as answer:
                page.goto(evil)
            assert answer.value.status == 403  # not 401: the cookie came along, and was refused
            assert "cross-site request refused" in answer.value.text()
            assert api.get(f"/api/v1/works/{work_id}").json()["status"] == "running"

            # the monitor's own button: a same-origin fetch
            page.goto(f"/works/{work_id}")
            page.on("dialog", lambda dialog: dialog.accept())
            page.get_by_role("button", name="Cancel work").click()
            expect(page.locator("#work-status")).to_contain_text("cancelled", timeout=30_000)
            assert api.get(f"/api/v1/works/{work_id}").json()["status"] == "cancelled"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
