"""``bitdance-rt serve``: argument errors (exit 2, one line on stderr, before any model is loaded), and
``serve --tiny`` as a real process: it prints its URL, answers ``/healthz``; on a first SIGTERM it lets active
requests finish (a short one's event stream ends with ``done``), on a second it cancels the rest (a long one's
stream ends with ``error``), then stops and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bitdance_rt.cli import main
from http_testing import SERVING_METHODS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv,says", [
    (["serve"], "give a model path, or --tiny"),
    (["serve", "model_dir", "--tiny"], "not both"),
    (["serve", "--tiny", "--port", "70000"], "--port"),
    (["serve", "--tiny", "--memory-budget", "lots"], "memory_budget"),
    (["serve", "--tiny", "--max-images", "0"], "--max-images"),
    (["serve", "--tiny", "--max-batch", "0"], "max_batch"),
    (["serve", "--tiny", "--default-size", "big"], "--default-size"),
    (["serve", "--tiny", "--preview-every", "-1"], "--preview-every"),
    (["serve", "--tiny", "--backend", "fastest"], "backend='fastest' is unknown"),
    (["serve", "--tiny", "--max-queue", "0"], "--max-queue"),
    (["serve", "--tiny", "--limit-concurrency", "0"], "--limit-concurrency"),
    (["serve", "--tiny", "--max-connections", "0"], "--max-connections"),
    (["serve", "--tiny", "--receive-timeout", "0"], "--receive-timeout"),
    (["serve", "--tiny", "--timeout-keep-alive", "-1"], "--timeout-keep-alive"),
    (["serve", "--tiny", "--preview-budget", "0"], "--preview-budget"),
    (["serve", "--tiny", "--request-timeout", "-2"], "--request-timeout"),
])
def test_argument_errors(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitdance-rt serve: ") and says in err and err.count("\n") == 1


def test_without_the_serve_extra_a_one_line_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    assert main(["serve", "--tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'bitdance-rt[serve]'" in err and "fastapi" in err


def test_the_runtime_imports_without_the_serve_extra():
    """The core install stays lean: importing the runtime and the CLI never needs the server's packages."""
    code = ("import sys\n"
            "for name in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'sse_starlette'):\n"
            "    sys.modules[name] = None\n"
            "import bitdance_rt, bitdance_rt.cli, bitdance_rt.cli.serve\n"
            "from bitdance_rt import Runtime, ImageRequest\n"
            "bitdance_rt.cli.build_parser()\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _event_names(stream: bytes) -> list[str]:
    return [ln[len("event: "):] for ln in stream.decode().splitlines() if ln.startswith("event: ")]


def test_serve_tiny_process_stops_cleanly_on_signals(tmp_path):
    from bitdance_rt.runtime import Runtime

    if not all(hasattr(Runtime, m) for m in SERVING_METHODS):
        pytest.skip("Runtime has no serving methods yet (the serving core is not in this tree)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bitdance_rt.cli", "serve", "--tiny", "--port", "0",
                                 "--drain-timeout", "60", "--preview-every", "0", "--max-batch", "2"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, (line, log.read_text())
        url = line.split(" on ")[1].split(" ")[0]
        with urllib.request.urlopen(url + "/healthz", timeout=30) as resp:
            info = json.loads(resp.read())
        assert info["status"] == "ok" and info["default_size"] == "512x512"

        status, short = _post(url + "/v1/images/generations/async", {"prompt": "x", "num_sampling_steps": 1})
        assert status == 202, short
        # --max-batch 2 holds one guided image: the long request waits until the short one is done
        status, long = _post(url + "/v1/images/generations/async", {"prompt": "y", "num_sampling_steps": 50})
        assert status == 202, long
        with urllib.request.urlopen(url + short["events_url"], timeout=120) as short_events, \
                urllib.request.urlopen(url + long["events_url"], timeout=120) as long_events:
            assert short_events.readline().startswith(b"event: queued")
            assert long_events.readline().startswith(b"event: queued")
            proc.send_signal(signal.SIGTERM)  # first: drain
            assert _event_names(short_events.read())[-1] == "done"  # finished, not cancelled
            proc.send_signal(signal.SIGTERM)  # second: cancel what is left
            tail = long_events.read()
        assert _event_names(tail)[-1] == "error" and b"request_cancelled" in tail
        assert proc.wait(60) == 0, log.read_text()
        assert "stopped" in proc.stdout.read()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
