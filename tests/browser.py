"""Headless Chromium (Debian's ``chromium``) for tests: load a page with the network blocked,
return the DOM after its scripts ran and every request the page made.

Blocking: every host name resolves to nothing except 127.0.0.1 (``--host-resolver-rules``),
and every non-loopback request goes to a dead proxy (``127.0.0.1:9``), so a page that needs
the network renders without it, or not at all. Recording: Chromium's net log lists each URL
request with the network isolation key of the page it served; Chromium's own background
requests (update checks, sign-in probes) have another key, and are told apart by it; the
one that borrows the page's key (autofill's server query) is switched off.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM_BIN = "/usr/bin/chromium"


@dataclass(frozen=True)
class Loaded:
    dom: str
    """The document after its scripts ran (``--dump-dom``)."""
    page_requests: list[str]
    """URLs the page itself asked for (its own URL included), in order."""

    def foreign_requests(self, url: str) -> list[str]:
        """The page's requests to anything but ``url``'s origin."""
        origin = urlsplit(url)[:2]
        return [u for u in self.page_requests if urlsplit(u)[:2] != origin]


def load(url: str, *, budget_ms: int = 15_000, timeout_s: float = 90.0) -> Loaded:
    """Open ``url`` (an http://127.0.0.1 page) in headless Chromium without network access."""
    if not Path(CHROMIUM_BIN).exists():
        raise RuntimeError(f"{CHROMIUM_BIN} is missing: `make install` installs Debian's chromium")
    work = Path(tempfile.mkdtemp(prefix="observer-chromium-"))
    netlog = work / "netlog.json"
    try:
        done = subprocess.run(
            [
                CHROMIUM_BIN,
                "--headless",
                "--no-sandbox",  # tests run as root in CI
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                # Autofill asks a Google server about every page with a form, under its key.
                "--disable-features=AutofillServerCommunication",
                f"--user-data-dir={work / 'profile'}",
                "--proxy-server=127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--log-net-log={netlog}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]!r}")
        return Loaded(done.stdout.decode("utf-8", "replace"), _page_requests(netlog, url))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _page_requests(netlog: Path, url: str) -> list[str]:
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    scheme, host = urlsplit(url)[:2]
    site = f"{scheme}://{host.split(':')[0]}"
    out = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if str(params.get("network_isolation_key", "")).startswith(site):
            out.append(params["url"])
    return out


def cells(dom: str) -> list[list[str]]:
    """The text of each table row's cells, scripts and styles left out.

    >>> cells("<table><tr><td>a</td><td><b>1.5</b></td></tr></table>")
    [['a', '1.5']]
    """
    text = re.sub(r"<script\b.*?</script>|<style\b.*?</style>", "", dom, flags=re.DOTALL)
    rows = []
    for row in re.findall(r"<tr\b.*?</tr>", text, flags=re.DOTALL):
        parts = re.findall(r"<t[dh]\b[^>]*>(.*?)</t[dh]>", row, flags=re.DOTALL)
        rows.append([" ".join(re.sub(r"<[^>]+>", " ", p).split()) for p in parts])
    return rows
