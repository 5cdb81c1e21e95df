"""Fixtures for the server test suite: `kiln serve` processes on loopback, on a free port the
server picks itself (`--port 0`, the address read from its first stdout line).

The kiln binary is $KILN_BIN (scripts/test-server.sh builds it and sets it), else
$CARGO_TARGET_DIR/debug/kiln, else target/debug/kiln. Real models come from models/ and their
tests are skipped when a model is absent; the tiny fixture model is always there.
"""

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "server_llama"
SMOL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = ROOT / "models" / "all-MiniLM-L6-v2"
STARTUP_S = 120


def kiln_bin() -> str:
    if os.environ.get("KILN_BIN"):
        return os.environ["KILN_BIN"]
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "debug" / "kiln")


class Server:
    """A running `kiln serve`; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, model: Path, name: str, *extra: str):
        self.name = name
        cmd = [kiln_bin(), "serve", "--model", str(model), "--port", "0",
               "--served-model-name", name, "--threads", "2", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.time() + STARTUP_S
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            m = re.search(r"on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
            if self.proc.poll() is not None:
                break
        else:
            self.proc.kill()
        if not hasattr(self, "url"):
            self.proc.kill()
            raise RuntimeError(f"kiln serve did not start: {line!r} {''.join(self.stderr)[-2000:]}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def start(model: Path, name: str, *extra: str):
    if not model.exists():
        pytest.skip(f"{model} is not present")
    srv = Server(model, name, *extra)
    yield srv
    code = srv.stop()
    assert code == 0, f"kiln serve exited with {code}: {''.join(srv.stderr)[-2000:]}"


@pytest.fixture(scope="session")
def tiny():
    yield from start(TINY, "tiny")


@pytest.fixture(scope="session")
def smol():
    yield from start(SMOL, "smollm2")


@pytest.fixture(scope="session")
def minilm():
    yield from start(MINILM, "minilm")


@pytest.fixture
def make_server():
    """Starts dedicated servers for tests that stop them or change their limits."""
    started = []

    def make(model: Path, name: str, *extra: str) -> Server:
        if not model.exists():
            pytest.skip(f"{model} is not present")
        srv = Server(model, name, *extra)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
