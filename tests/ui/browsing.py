"""Driving a JupyterLab with Debian's Chromium: shared by the UI tests (a server started here,
tests/ui/conftest.py) and the lab VM stage (the lab VM's own server, through its forwarded port,
tests/labvm). Nothing here starts a server."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# Quiet, offline, reproducible: no sync, no component updates, no first-run UI, no GPU.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we are root in CI; Chromium's sandbox refuses to run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: where it is and how to get in. ``root`` is the folder it serves
    when that folder is on this machine (None for the lab VM's)."""

    base_url: str
    token: str
    root: Path | None = None
    timeout: float = 10.0       # seconds for one API call (the lab VM's server is slower)

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}{path}{sep}token={self.token}"

    def api(self, method: str, path: str, body: object = None, timeout: float | None = None) -> object:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode(),
        )
        with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
            answer = response.read()
        return json.loads(answer) if answer else None

    def notebook(self, name: str) -> dict:
        """A notebook as the server has it on its disk (the contents API)."""
        return self.api("GET", f"/api/contents/{urllib.parse.quote(name)}?content=1")["content"]


def launch(playwright):
    # executable_path: Debian's chromium, never a downloaded build.
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def open_lab(browser, lab: Lab, timeout_ms: int = 90_000):
    """A JupyterLab page in a context of its own, at 1366x768 (the laptop screen the course is
    written for), in a workspace of our own, reset: no tabs restored from an earlier session."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(lab.url("/lab/workspaces/lh-ui-test?reset"))
    page.locator(".jp-DirListing-item").first.wait_for(timeout=timeout_ms)
    return context, page


def dismiss_dialogs(page) -> None:
    """Answer whatever JupyterLab asks when tabs close ("Save changes?"): discard, we never keep them."""
    for _ in range(10):
        dialog = page.locator(".jp-Dialog")
        if not dialog.count():
            return
        for label in ("Discard", "Don't Save", "Shut Down", "Close", "Ok", "OK", "Cancel"):
            button = dialog.locator("button", has_text=label)
            if button.count():
                button.first.click()
                break
        else:
            page.keyboard.press("Escape")
        page.wait_for_timeout(200)


def close_all_tabs(page) -> None:
    page.keyboard.press("Escape")
    dismiss_dialogs(page)
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.get_by_role("menuitem", name="Close All Tabs", exact=True).click()
    page.wait_for_timeout(300)
    dismiss_dialogs(page)
