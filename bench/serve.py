"""Our OIP server beside the in-process session (the limit) and the server a user would otherwise write.

Per zoo model (small ones by default): export a package, then at 1, 8 and 32 concurrent clients on
loopback, each sending batch-1 requests (OIP v2 JSON, the same body to every system) for
``--seconds``, measure requests/s, p50 and p99 of
  in-process   ``OrtSession.run`` from as many threads (no HTTP: the limit),
  ours         ``toolchain serve`` with dynamic batching (``--max-batch 64``),
  ours-nobatch ``toolchain serve --max-batch 1`` (the batching gain is ours / ours-nobatch),
  peer         a minimal uvicorn + FastAPI + ONNX Runtime handler (parse JSON, run, answer JSON),
  litserve     the same handler on LitServe, when it is installed.
Servers run in their own processes; clients are keep-alive connections on threads in up to 4 processes.
Run: ``python bench/serve.py [--seconds 3] [--clients 1,8,32] [name ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import zoo  # noqa: F401
from runtimes.ort import OrtOptions, OrtRuntime
from toolchain.build.pipeline import export_package
from toolchain.core.spec import SPECS
from toolchain.package.format import load_array, open_package
from toolchain.serve.protocol import tensor_metadata

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ("feed.dlrm_small", "face.match_lr")
PEER = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort, uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    session = ort.InferenceSession(sys.argv[1])
    types = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16}
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict) -> JSONResponse:
        feeds = {i["name"]: np.asarray(i["data"], types[i["datatype"]]).reshape(i["shape"]) for i in body["inputs"]}
        outs = session.run(None, feeds)
        return JSONResponse({"model_name": name, "outputs": [
            {"name": o.name, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
            for o, v in zip(session.get_outputs(), outs)]})

    @app.get("/v2/health/ready")
    def ready() -> dict:
        return {}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
    """
)
LITSERVE = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort, litserve as ls
    types = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16}

    class Api(ls.LitAPI):
        def setup(self, device):
            self.session = ort.InferenceSession(sys.argv[1])
        def decode_request(self, request):
            inputs = request["inputs"]
            return {i["name"]: np.asarray(i["data"], types[i["datatype"]]).reshape(i["shape"]) for i in inputs}
        def predict(self, feeds):
            return self.session.run(None, feeds)
        def encode_response(self, output):
            outs = output
            return {"outputs": [{"name": o.name, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
                                for o, v in zip(self.session.get_outputs(), outs)]}

    if __name__ == "__main__":
        server = ls.LitServer(Api(), api_path="/v2/models/m/infer", accelerator="cpu")
        server.run(port=int(sys.argv[2]), generate_client_file=False)
    """
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(command: list[str], port: int, ready: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # NOTE: in the temporary folder: a server must leave nothing behind in the checkout
    cwd = tempfile.gettempdir()
    # NOTE: its own process group: LitServe's worker processes outlive a terminated parent, so all are signalled
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", ready)
            if connection.getresponse().status in (200, 405):
                return process
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not become ready")


def _latencies(call: Callable[[], None], clients: int, seconds: float) -> tuple[list[float], int, float]:
    """Latencies (s) and failures of `clients` threads calling `call` for `seconds`, and the time taken."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0]
    stop = time.monotonic() + seconds

    def worker(mine: list[float]) -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                call()
            except Exception:
                failures[0] += 1
                continue
            mine.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in latencies]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x for mine in latencies for x in mine], failures[0], time.monotonic() - began


def _summary(latencies: list[float], failures: int, elapsed: float) -> tuple[float, float, float, int]:
    """requests/s, p50 ms, p99 ms, failures."""
    every = sorted(latencies)
    if not every:
        return 0.0, float("nan"), float("nan"), failures
    return len(every) / elapsed, 1e3 * every[len(every) // 2], 1e3 * every[int(len(every) * 0.99)], failures


def _client_process(
    port: int, path: str, body: bytes, clients: int, seconds: float, out: Any, headers: dict[str, str] | None
) -> None:
    out.put(_latencies(_http_call(port, path, body, headers), clients, seconds))


def _load_http(
    port: int, path: str, body: bytes, clients: int, seconds: float, headers: dict[str, str] | None = None
) -> tuple[float, float, float, int]:
    """`clients` keep-alive connections spread over up to 4 client processes (one Python client saturates first)."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = min(clients, 4)
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    workers = [
        context.Process(target=_client_process, args=(port, path, body, n, seconds, out, headers)) for n in shares
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join()
    latencies = [x for r in results for x in r[0]]
    return _summary(latencies, sum(r[1] for r in results), max(r[2] for r in results))


def _http_call(port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> Callable[[], None]:
    """A keep-alive POST of `body` per thread (a JSON body unless `headers` say otherwise).

    NOTE: a raw socket with the request bytes built once, not http.client: its header parsing (the email
    package) cost the client ~0.2 ms per request on the same 2 cores as the server, which every system's
    latency carried. Every system is measured with this client; an answer without Content-Length fails.
    """
    sent = headers or {"Content-Type": "application/json"}
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    request = ("\r\n".join([*lines, *(f"{k}: {v}" for k, v in sent.items())]) + "\r\n\r\n").encode() + body
    local = threading.local()

    def call() -> None:
        sock = getattr(local, "sock", None)
        if sock is None:
            sock = local.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local.pending = b""
        try:
            sock.sendall(request)
            data = local.pending
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                (int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")[1:] if h.lower().startswith(b"content-length:")),
                None,
            )
            if length is None:
                raise ConnectionError("an answer without Content-Length")
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                rest += chunk
            local.pending = rest[length:]
        except (OSError, ValueError, IndexError):
            local.sock = None
            sock.close()
            raise
        if status != 200:
            raise RuntimeError(status)

    return call


def bench_model(name: str, seconds: float, clients: tuple[int, ...], tmp: Path) -> list[str]:
    """Rows of the table for one zoo model."""
    package = tmp / name
    assert export_package(SPECS.get(name), package, formats=("auto",), optimize=False)
    opened = open_package(package)
    ones = [s for s in opened.samples if 1 in dict(s.get("sizes") or {}).values()]
    sample = (ones or opened.samples)[0]
    feeds = {k: load_array(opened.file(v)) for k, v in sample["inputs"].items()}
    signature = opened.signature
    inputs = [
        {**tensor_metadata(t), "shape": list(feeds[t.name].shape), "data": feeds[t.name].ravel().tolist()}
        for t in signature.inputs
    ]
    body = json.dumps({"inputs": inputs}).encode()
    # NOTE: the binary tensor extension, what tritonclient sends by default: a JSON head, then raw bytes.
    head = json.dumps(
        {
            "inputs": [
                {
                    **tensor_metadata(t),
                    "shape": list(feeds[t.name].shape),
                    "parameters": {"binary_data_size": feeds[t.name].nbytes},
                }
                for t in signature.inputs
            ]
        }
    ).encode()
    binary = head + b"".join(np.ascontiguousarray(feeds[t.name]).tobytes() for t in signature.inputs)
    binary_headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    onnx = opened.file(str(opened.artifacts[0]["path"]))
    session = OrtRuntime(OrtOptions()).load(onnx, signature=signature)
    systems: dict[str, Callable[[int], tuple[float, float, float, int]]] = {
        "in-process": lambda n: _summary(*_latencies(lambda: session.run(feeds), n, seconds))
    }
    warm: list[Callable[[], None]] = []
    processes = []
    infer = f"/v2/models/{name}/infer"
    cli = [sys.executable, "-m", "toolchain.cli", "serve", str(package)]
    for label, extra in (("ours", ["--max-batch", "64"]), ("ours-nobatch", ["--max-batch", "1"])):
        port = _port()
        processes.append(_start([*cli, "--port", str(port), *extra], port, "/v2/health/ready"))
        systems[label] = functools.partial(_load_http, port, infer, body, seconds=seconds)
        warm.append(_http_call(port, infer, body))
        if label == "ours":
            systems["ours-binary"] = functools.partial(
                _load_http, port, infer, binary, seconds=seconds, headers=binary_headers
            )
            warm.append(_http_call(port, infer, binary, binary_headers))
    peer = tmp / "peer.py"
    peer.write_text(PEER)
    port = _port()
    processes.append(_start([sys.executable, str(peer), str(onnx), str(port)], port, "/v2/health/ready"))
    systems["peer"] = functools.partial(_load_http, port, infer, body, seconds=seconds)
    warm.append(_http_call(port, infer, body))
    try:
        import litserve  # noqa: F401

        lit = tmp / "lit.py"
        lit.write_text(LITSERVE)
        port = _port()
        processes.append(_start([sys.executable, str(lit), str(onnx), str(port)], port, "/health"))
        systems["litserve"] = functools.partial(_load_http, port, "/v2/models/m/infer", body, seconds=seconds)
        warm.append(_http_call(port, "/v2/models/m/infer", body))
    except (ImportError, RuntimeError):
        pass
    rows = []
    try:
        for call in warm:
            for _ in range(20):
                call()
        for n in clients:
            measured = {system: run(n) for system, run in systems.items()}
            for system, (rps, p50, p99, failed) in measured.items():
                gain = ""
                if system == "ours":
                    batching = rps / max(measured["ours-nobatch"][0], 1e-9)
                    gain = f"batching x{batching:.2f}, vs peer x{rps / max(measured['peer'][0], 1e-9):.2f}"
                rows.append(f"{name:18} {n:>3} {system:13} {rps:9.0f} {p50:8.2f} {p99:8.2f} {failed:6} {gain}")
            overhead = measured["ours"][1] - measured["in-process"][1]
            rows.append(f"{'':18} {n:>3} {'overhead p50 ours - in-process':43} {overhead:.2f} ms")
            rows.extend(_targets(name, n, measured))
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    return rows


TARGET_OVERHEAD_MS = 1.0
"""At 1 client: our p50 minus the in-process p50 (what HTTP costs)."""
TARGET_GAIN = 1.5
"""At 32 clients: our requests/s over the peer's (batching on), with a p99 no worse than the peer's."""


def _targets(name: str, clients: int, measured: dict[str, tuple[float, float, float, int]]) -> list[str]:
    """The issue's targets that apply at `clients`, each with what was measured and whether it is met."""
    ours, peer, alone = measured["ours"], measured["peer"], measured["in-process"]
    lines = []
    if clients == 1:
        for system, body in (("ours", "JSON"), ("ours-binary", "binary")):
            overhead = measured[system][1] - alone[1]
            met = overhead <= TARGET_OVERHEAD_MS
            verdict = "met" if met else "NOT met"
            lines.append(f"overhead p50 ({body} body) {overhead:.2f} ms <= {TARGET_OVERHEAD_MS:g} ms: {verdict}")
    if clients == 32:
        gain = ours[0] / max(peer[0], 1e-9)
        met = gain >= TARGET_GAIN
        lines.append(f"req/s x{gain:.2f} of the peer's >= x{TARGET_GAIN:g}: {'met' if met else 'NOT met'}")
        met = ours[2] <= peer[2] and ours[3] == 0
        lines.append(f"p99 {ours[2]:.2f} ms <= peer's {peer[2]:.2f} ms, 0 failed: {'met' if met else 'NOT met'}")
    return [f"{name:18} {clients:>3} target: {line}" for line in lines]


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,8,32")
    args = parser.parse_args()
    clients = tuple(int(c) for c in args.clients.split(","))
    print(f"(host: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} before the run)")
    print(f"{'model':18} {'c':>3} {'system':13} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            for row in bench_model(name, args.seconds, clients, Path(tmp)):
                print(row, flush=True)
    print(
        f"(host: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} after the run; one run of "
        f"{args.seconds:g}s per cell; targets at 1 and 32 clients, from issue 21)"
    )


if __name__ == "__main__":
    main()
