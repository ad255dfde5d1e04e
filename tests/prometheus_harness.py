"""A real Prometheus server (Debian's ``prometheus`` binary) for tests, scraping whatever
targets a test names, and a tiny HTTP server that serves exposition text for it to scrape.

    with ExpositionServer(lambda: "up_fixture 1\\n") as target:
        with PrometheusServer({"fixture": [target.address]}) as prom:
            prom.wait_for_scrapes(2)
            prom.query("up_fixture")

``tests/conftest.py`` turns this into the ``start_prometheus`` fixture.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from observer.core import children

PROMETHEUS_BIN = "/usr/bin/prometheus"
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExpositionServer:
    """Serves ``render()`` (Prometheus text format) on every GET, on a free loopback port."""

    def __init__(self, render: Callable[[], str]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.render().encode()
                outer.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", EXPOSITION_CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.render = render
        self.scrapes = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, daemon=True, name="exposition"
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> ExpositionServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ExpositionServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PrometheusServer:
    """Prometheus on a free loopback port, scraping ``targets`` ({job: ["host:port", ...]}).

    ``jobs`` adds whole scrape_config entries (relabelling, metrics_path...) as dicts;
    ``rule_files`` are rule files (globs allowed) to load.
    """

    def __init__(
        self,
        targets: dict[str, list[str]] | None = None,
        *,
        scrape_interval: str = "1s",
        jobs: list[dict[str, Any]] | None = None,
        rule_files: list[str | Path] | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        if not Path(PROMETHEUS_BIN).exists():
            raise RuntimeError(
                f"{PROMETHEUS_BIN} is missing: `make install` installs Debian's prometheus"
            )
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="observer-prom-"))
        scrape_configs = [
            {"job_name": job, "static_configs": [{"targets": addrs}]}
            for job, addrs in (targets or {}).items()
        ] + list(jobs or [])
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": scrape_configs,
        }
        if rule_files:  # recording/alerting rules, evaluated every scrape_interval
            config["rule_files"] = [str(Path(f).resolve()) for f in rule_files]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._log = (self.dir / "prometheus.log").open("wb")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        self.process = children.start(
            [
                PROMETHEUS_BIN,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}: {self.log()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready in {self.start_timeout_s}s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.api("query", query=promql)["result"]

    def wait_for_scrapes(self, n: int = 2, timeout_s: float = 30.0) -> None:
        """Block until every target is up and has been scraped at least ``n`` times."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            active = self.api("targets")["activeTargets"]
            counts = self.query("count_over_time(up[5m])")
            if (
                active
                and all(t["health"] == "up" for t in active)
                and len(counts) >= len(active)
                and all(float(c["value"][1]) >= n for c in counts)
            ):
                return
            time.sleep(0.25)
        raise TimeoutError(f"targets not scraped {n} times in {timeout_s}s: {self.api('targets')}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
