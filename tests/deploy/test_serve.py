"""``mlflow models serve -m models:/leader-student@champion`` answered over HTTP on 127.0.0.1.

The server runs with ``--env-manager local`` (this environment). The default manager
(virtualenv) also works on this machine but rebuilds an environment from the model's pinned
requirements first (torch and mlflow from a package index: ~2 minutes, and a network or a local
wheel index) -- too slow and too dependent on the network for CI. What the default manager
proves, that the model needs no ``leader_kedro`` install, test_registry.py checks directly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

FIRST_VISIT = {
    "diagnoses": [["4019", "42731", "NOT-A-CODE"]],
    "procedures": [["3893"]],
    "medications": [],
    "gender": "F",
    "age": 71.0,
    "insurance": "Medicare",
    "admission_type": "EMERGENCY",
    "top_k": 0,  # every class, so that the interacting pairs among them show
}
MULTI_VISIT = {
    "diagnoses": [["41401", "4019"], ["486", "42731"]],
    "procedures": [["8856"], []],
    "medications": [["B01A", "C07A"]],
    "gender": "M",
    "age": 64,
    "top_k": 5,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(tracked_flow, tmp_path_factory):
    port = _free_port()
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tracked_flow / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # uvicorn
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                "models:/leader-student@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path_factory.mktemp("serve_cwd"),
            start_new_session=True,  # its own process group: uvicorn goes down with it
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "server not up: " + log.read_text()[-3000:]
            time.sleep(0.5)
        yield {"url": url, "proc": proc, "port": port, "log": log}
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its PID: the CLI and the uvicorn it started), then
    wait until no process of the group is left (SIGKILL after 30 s)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # is any process of the group still there?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_served_champion_answers_ranked_classes_with_ddi_warnings(server, tracked_flow):
    body = json.dumps({"inputs": [FIRST_VISIT, MULTI_VISIT]}).encode()
    status, answer = _post(f"{server['url']}/invocations", body)
    assert status == 200, answer
    first, multi = answer["predictions"]
    assert [first["row"], multi["row"]] == [0, 1]
    vocab = json.loads((tracked_flow / "data/03_primary/vocab.json").read_text())
    names = json.loads((tracked_flow / "data/03_primary/code_names.json").read_text())
    assert len(first["recommendations"]) == len(vocab["medication"])  # top_k 0: every class
    assert len(multi["recommendations"]) == 5
    for patient in (first, multi):
        recs = patient["recommendations"]
        assert [r["rank"] for r in recs] == list(range(1, len(recs) + 1))
        probs = [r["probability"] for r in recs]
        assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
        for r in recs:
            assert r["name"] == names["medication"][r["atc3"]]
    # DDI warnings: exactly the interacting pairs among the recommended classes
    import pandas as pd

    ddi = pd.read_csv(tracked_flow / "data/03_primary/ddi_adjacency.csv", index_col=0)
    recommended = [r["atc3"] for r in first["recommendations"]]
    expected = {
        frozenset((a, b))
        for i, a in enumerate(recommended)
        for b in recommended[i + 1 :]
        if a in ddi.index and b in ddi.columns and ddi.loc[a, b]
    }
    got = {frozenset((w["atc3_a"], w["atc3_b"])) for w in first["ddi_warnings"]}
    assert got == expected and expected, "the whole vocabulary holds interacting pairs"
    # unknown codes are counted, never an error
    assert first["unknown_codes"]["diagnoses"] == 1
    assert multi["unknown_codes"]["diagnoses"] in (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "record, words",
    [
        ({**MULTI_VISIT, "weight": 80}, ["record 0", "unknown field", "weight"]),
        ({**MULTI_VISIT, "age": "old"}, ["age", "valid number"]),
        (
            {**MULTI_VISIT, "diagnoses": [], "procedures": [], "medications": []},
            ["diagnoses is empty"],
        ),
        ({**MULTI_VISIT, "medications": [["B01A"], ["C07A"]]}, ["medications has 2 visit(s)"]),
        ({k: v for k, v in MULTI_VISIT.items() if k != "procedures"}, ["procedures", "required"]),
    ],
    ids=["unknown-field", "wrong-type", "empty-visit-list", "current-medications", "missing-field"],
)
def test_a_malformed_request_gets_a_clear_400(server, record, words):
    status, answer = _post(
        f"{server['url']}/invocations", json.dumps({"inputs": [record]}).encode()
    )
    assert status == 400, answer
    message = answer["message"]
    assert "Traceback" not in json.dumps(answer) and "stack_trace" not in answer
    for word in words:
        assert word.lower() in message.lower(), message


def test_a_body_that_is_not_json_gets_a_400(server):
    status, answer = _post(f"{server['url']}/invocations", b"diagnoses=4019")
    assert status == 400 and "JSON" in answer["message"]


def test_the_server_stops_by_its_pid(server):
    """Last in this module: the fixture's teardown must leave nothing listening on the port."""
    assert server["proc"].poll() is None
    _stop(server["proc"])
    assert server["proc"].returncode is not None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server["port"])) != 0
