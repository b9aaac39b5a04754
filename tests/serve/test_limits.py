from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve.conftest import live, request, serving
from toolchain.core.errors import InferenceError
from toolchain.serve.limits import Limits, RequestError
from toolchain.serve.protocol import decode_request
from toolchain.serve.repository import Repository, ServeOptions
from toolchain.serve.server import BackgroundServer

pytest.importorskip("fastapi")

LIMITS = Limits(max_body_bytes=1 << 20, max_elements=10_000, body_timeout_s=1.0, header_timeout_s=1.0)
INFER = "/v2/models/test.tiny/infer"


def _x(shape: list[Any], data: Any = None, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    if data is None:
        data = [0.5] * int(np.prod(shape))
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data, **extra}]}


@pytest.fixture(scope="module")
def server(tiny_package: Path) -> Iterator[BackgroundServer]:
    with serving([tiny_package], options=ServeOptions(limits=LIMITS)) as (_, background):
        yield background


def _refused(server: BackgroundServer, body: Any, status: int, match: str, **kw: Any) -> None:
    got, _, answer = request(server, "POST", INFER, body, **kw)
    assert got == status, answer[:300]
    assert match in json.loads(answer)["error"], answer[:300]
    assert live(server)


def test_row18_body_over_the_limit_with_content_length(server: BackgroundServer) -> None:
    _refused(server, b"{" + b" " * (2 << 20) + b"}", 413, "over the limit")


def test_row18_chunked_body_is_cut_off_while_streaming(server: BackgroundServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"1" * (64 << 10)
    sent = 0
    try:
        for _ in range(64):  # 4 MiB offered, the limit is 1 MiB
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
    except OSError:
        pass  # the server answered and closed: it stopped reading
    answer = sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit" in answer
    assert live(server)


def test_row18_json_is_bounded_tighter_than_binary_tensors(tiny_package: Path) -> None:
    limits = Limits(max_body_bytes=1 << 20, max_json_bytes=1 << 10)
    with serving([tiny_package], options=ServeOptions(limits=limits)) as (_, background):
        _refused(background, _x([1, 4], data=[0.5] * 4, id="x" * 2000), 413, "over the limit of 1024")
        x = np.ones((7, 4), np.float32)
        header = json.dumps(_x([7, 4], data=None, parameters={"binary_data_size": x.nbytes}))
        header = json.dumps({"inputs": [{k: v for k, v in json.loads(header)["inputs"][0].items() if k != "data"}]})
        status, _, answer = request(
            background,
            "POST",
            INFER,
            header.encode() + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert status == 200, answer
        big = header.replace("}]}", ', "pad": "' + "p" * 2000 + '"}]}')
        status, _, answer = request(
            background,
            "POST",
            INFER,
            big.encode() + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(big))},
        )
        assert status == 413 and b"binary tensor data extension" in answer


def test_row18_huge_numbers_and_deep_nesting(server: BackgroundServer) -> None:
    digits = b"9" * 1_000_000  # under the body limit: refused by the JSON parser's digit limit
    _refused(server, b'{"inputs": [{"name": "x", "shape": [1, 4], "data": [' + digits + b"]}]}", 400, "not valid JSON")
    _refused(server, b'{"inputs": [{"name": "x", "shape": [1, 4], "data": [' + digits * 2 + b"]}]}", 413, "limit")
    deep = b'{"inputs": [{"name": "x", "shape": [1, 4], "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    _refused(server, deep, 400, "nested too deeply")


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ([-1, 4], "non-negative integer, got -1"),
        ([0, 4], "dim 'batch' (shape[0]) is 0; the package was verified for 1.."),
        ([1.5, 4], "shape[0] must be a non-negative integer, got 1.5"),
        (["3", 4], "shape[0] must be a non-negative integer, got '3'"),
        ([2, 5], "shape[1] must be 4"),
        ([2, 4, 1], "shape must be a list of 2 sizes"),
        ([2**62, 2**62], "is 4611686018427387904; the package was verified for"),
    ],
)
def test_row19_shapes_are_checked_before_allocation(server: BackgroundServer, shape: list[Any], match: str) -> None:
    _refused(server, _x(shape, data=[0.0]), 400, match)
    assert "'x'" in json.loads(request(server, "POST", INFER, _x(shape, data=[0.0]))[2])["error"]


def test_row19_element_cap_also_binds_verified_sizes(tiny_package: Path) -> None:
    with serving([tiny_package], options=ServeOptions(limits=Limits(max_elements=8))) as (_, background):
        _refused(background, _x([3, 4]), 400, "input 'x': shape [3, 4] brings the request over 8 elements")


def test_row19_data_must_match_the_shape(server: BackgroundServer) -> None:
    _refused(server, _x([2, 4], data=[0.0] * 7), 400, "input 'x': 7 values for shape [2, 4] (8)")
    _refused(server, _x([2, 4], data=[[0.0] * 4, [0.0] * 3]), 400, "input 'x': ragged data")
    _refused(server, _x([2, 4], data=[[0.0] * 4, 1.0]), 400, "input 'x': ragged data")
    _refused(server, _x([2, 4], data=[[[0.0]] * 4] * 2), 400, "nested deeper than shape")
    ok = request(server, "POST", INFER, _x([2, 4], data=[[0.25] * 4, [0.5] * 4]))
    assert ok[0] == 200 and json.loads(ok[2])["outputs"][0]["shape"] == [2, 2]


def test_row20_datatypes_inputs_and_outputs(server: BackgroundServer) -> None:
    _refused(server, _x([1, 4], datatype="FP64"), 400, "input 'x': datatype FP64 cannot be cast to FP32 without loss")
    _refused(server, _x([1, 4], data=["a", "b", "c", "d"], datatype="BYTES"), 400, "BYTES given; the model takes FP32")
    _refused(server, _x([1, 4], data=[1.0, True, 2.0, 3.0]), 400, "value True is not a FP32 JSON value")
    _refused(server, _x([1, 4], data=[1e39, 0, 0, 0]), 400, "outside the FP32 range")
    _refused(server, _x([1, 4], datatype="XX"), 400, "datatype 'XX' is not one of")
    two = {"inputs": _x([1, 4])["inputs"] * 2}
    _refused(server, two, 400, "input 'x' given twice")
    _refused(server, {"inputs": [{**_x([1, 4])["inputs"][0], "name": "z"}]}, 400, "unknown input 'z'")
    _refused(server, {"inputs": []}, 400, "missing input(s) ['x']")
    _refused(server, {**_x([1, 4]), "outputs": [{"name": "nope"}]}, 400, "unknown output 'nope'")
    _refused(server, {**_x([1, 4]), "outputs": [{"name": "y"}, {"name": "y"}]}, 400, "output 'y' asked twice")
    nan = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, 2, 3]}]}'
    _refused(server, nan, 400, "NaN is not a JSON number")
    _refused(server, nan.replace(b"NaN", b"-Infinity"), 400, "-Infinity is not a JSON number")
    binary_header = json.dumps(_x([1, 4], data=None, parameters={"binary_data_size": 8})).encode()
    headers = {"Inference-Header-Content-Length": str(len(binary_header))}
    body = binary_header.replace(b', "data": [0.5, 0.5, 0.5, 0.5]', b"") + b"\0" * 8
    headers = {"Inference-Header-Content-Length": str(len(body) - 8)}
    _refused(server, body, 400, "input 'x': binary_data_size 8 != 16 bytes", headers=headers)


def test_row20_only_lossless_integer_casts() -> None:
    from toolchain.core.signature import Signature, TensorSig

    signature = Signature((TensorSig("ids", "int32", ("batch", 2)),), (TensorSig("y", "float32", ("batch",)),))
    body = {"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2**31 - 1]}]}
    fed = decode_request(json.dumps(body).encode(), signature, Limits()).feeds["ids"]
    assert fed.dtype == np.int32 and fed.tolist() == [[1, 2**31 - 1]]
    body["inputs"][0]["data"] = [1, 2**31]
    with pytest.raises(RequestError, match="input 'ids': values beyond the INT32 range"):
        decode_request(json.dumps(body).encode(), signature, Limits())
    body["inputs"][0].update(datatype="INT32", data=[1, 2**31])
    with pytest.raises(RequestError, match="input 'ids': a value lies outside the INT32 range"):
        decode_request(json.dumps(body).encode(), signature, Limits())
    huge = {"inputs": [{"name": "ids", "shape": [2**62, 2**62], "datatype": "INT32", "data": [1]}]}
    with pytest.raises(RequestError, match=r"input 'ids': shape \[4611686018427387904, 4611686018427387904\] brings"):
        decode_request(json.dumps(huge).encode(), Signature((TensorSig("ids", "int32", ("n", "m")),), ()), Limits())
    body["inputs"][0].update(datatype="INT32", data=[1.0, 2])
    with pytest.raises(RequestError, match=r"value 1\.0 is not a INT32 JSON value"):
        decode_request(json.dumps(body).encode(), signature, Limits())


def test_row20_a_widening_cast_is_accepted(dlrm_package: Path) -> None:
    rng = np.random.default_rng(1)
    body = {
        "inputs": [
            {"name": "dense", "shape": [2, 13], "datatype": "FP16", "data": rng.standard_normal(26).tolist()},
            {"name": "sparse", "shape": [2, 8, 4], "datatype": "INT32", "data": rng.integers(0, 100, 64).tolist()},
        ]
    }
    with serving([dlrm_package]) as (_, background):
        status, _, answer = request(background, "POST", "/v2/models/feed.dlrm_small/infer", body)
        assert status == 200, answer
        body["inputs"][1]["data"][5] = 10**9  # an id past the table: the model itself fails
        status, _, answer = request(background, "POST", "/v2/models/feed.dlrm_small/infer", body)
        assert status == 500 and "feed.dlrm_small' version 1 failed" in json.loads(answer)["error"]
        body["inputs"][1]["data"][5] = 3
        assert request(background, "POST", "/v2/models/feed.dlrm_small/infer", body)[0] == 200


class _Gate:
    """Blocks the model until released: a run that outlives the timeout, or a queue that fills."""

    def __init__(self, repository: Repository, model: str) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.batcher = repository.resolve(model).batcher
        assert self.batcher is not None
        run = self.batcher._run

        def blocked(feeds: Any) -> Any:
            self.entered.release()
            self.release.wait(30)
            return run(feeds)

        self.batcher._run = blocked


def test_row21_queue_full_gets_503_with_retry_after(tiny_package: Path) -> None:
    options = ServeOptions(limits=Limits(max_queue=2, retry_after_s=3), max_batch=1)
    with serving([tiny_package], options=options) as (repository, background), ThreadPoolExecutor(2) as pool:
        gate = _Gate(repository, "test.tiny")
        first = pool.submit(request, background, "POST", INFER, _x([1, 4]))
        assert gate.entered.acquire(timeout=30)
        second = pool.submit(request, background, "POST", INFER, _x([1, 4]))
        while gate.batcher.depth < 2:
            time.sleep(0.01)
        status, headers, answer = request(background, "POST", INFER, _x([1, 4]))
        assert status == 503 and headers["retry-after"] == "3" and b"busy" in answer
        assert live(background)
        gate.release.set()
        assert first.result()[0] == 200 and second.result()[0] == 200


def test_row21_inference_past_the_timeout_gets_504_and_frees_the_worker(tiny_package: Path) -> None:
    options = ServeOptions(limits=Limits(timeout_s=0.5), max_batch=1)
    with serving([tiny_package], options=options) as (repository, background):
        gate = _Gate(repository, "test.tiny")
        status, _, answer = request(background, "POST", INFER, _x([1, 4]))
        assert status == 504 and b"did not answer within 0.5s" in answer
        status, _, answer = request(background, "POST", INFER, _x([1, 4]))  # queued behind it, past its deadline
        assert status == 504 and live(background)
        gate.release.set()
        while gate.batcher.depth:
            time.sleep(0.01)
        assert request(background, "POST", INFER, _x([1, 4]))[0] == 200


def test_row21_a_model_error_is_500_and_the_server_keeps_serving(tiny_package: Path) -> None:
    with serving([tiny_package]) as (repository, background):
        batcher = repository.resolve("test.tiny").batcher
        assert batcher is not None
        run, calls = batcher._run, []

        def failing_once(feeds: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise InferenceError("the runtime failed")
            return run(feeds)

        batcher._run = failing_once
        status, _, answer = request(background, "POST", INFER, _x([1, 4]))
        assert status == 500 and b"the runtime failed" in answer
        assert request(background, "POST", INFER, _x([1, 4]))[0] == 200


def test_row21_a_slow_client_is_cut_off(server: BackgroundServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode())
    started = time.monotonic()
    answer = b""
    for _ in range(100):
        assert live(server)
        try:
            sock.sendall(b" ")
        except OSError:
            break
        sock.settimeout(0.25)
        try:
            answer = sock.recv(65536)
            break
        except TimeoutError:
            continue
    sock.settimeout(30)
    answer = answer or sock.recv(65536)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1s" in answer
    assert time.monotonic() - started < 20


def _closed_while_trickling(sock: socket.socket, data: bytes) -> bool:
    """Send `data` a byte per 0.1 s (then padding); True once the server closed the connection."""
    for i in range(200):
        try:
            sock.sendall(data[i : i + 1] or b"a")
            sock.settimeout(0.1)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_row21_headers_sent_one_byte_at_a_time_are_cut_off(server: BackgroundServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        assert _closed_while_trickling(sock, f"POST {INFER} HTTP/1.1\r\nHost: x\r\nX-Pad: ".encode())
    assert time.monotonic() - started < 20 and live(server)
    # the next request of a kept-alive connection gets the same clock
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_while_trickling(sock, b"GET /v2/health/live HTTP/1.1\r\nX-Pad: ")
    # a connection that never sends a byte is closed too, not held until the process runs out of sockets
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        assert sock.recv(1) == b""
    assert live(server)


def test_row21_headers_over_the_size_limit_get_431(tiny_package: Path) -> None:
    with serving([tiny_package], options=ServeOptions(limits=Limits(max_header_bytes=4096))) as (_, background):
        pad = "p" * 1000
        headers = {f"X-Pad-{i}": pad for i in range(8)}
        assert request(background, "GET", "/v2/health/live", headers=headers)[0] == 431
        assert request(background, "GET", "/v2/health/live?" + "q" * 5000)[0] == 431
        assert request(background, "GET", "/v2/health/live", headers={"X-Pad": pad})[0] == 200


def test_row21_unknown_models_and_names_that_look_like_paths(
    server: BackgroundServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("never read")
    opened: list[str] = []
    watching = [True]

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if watching[0] and event == "open" and isinstance(args[0], str | bytes | Path):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    try:
        relative = "..%2F" * 12 + str(canary).lstrip("/").replace("/", "%2F")
        for path in (
            "/v2/models/nope/infer",
            f"/v2/models/{relative}/infer",
            f"/v2/models/{relative}",
            "/v2/models/..%2F..%2Fetc%2Fpasswd/ready",
            f"/v2/models/test.tiny/versions/{relative}/infer",
        ):
            status, _, answer = request(server, "POST" if path.endswith("infer") else "GET", path, _x([1, 4]))
            assert status == 404, (path, answer)
        status, _, answer = request(server, "POST", f"/v2/repository/models/{relative}/load", b"")
        assert status == 404
    finally:
        watching[0] = False
    assert not [p for p in opened if "canary" in p or "passwd" in p]
    assert live(server)


def test_row21_readiness_is_strict(tiny_package: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_package, root / "good" / "1")
    shutil.copytree(tiny_package, root / "bad" / "1")
    onnx = next((root / "bad" / "1").rglob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with serving(root=root) as (_, background):
        assert request(background, "GET", "/v2/models/good/ready")[0] == 200
        status, _, answer = request(background, "GET", "/v2/models/bad/ready")
        assert status == 503 and b"sha256 does not match" in answer
        assert request(background, "GET", "/v2/health/ready")[0] == 503
        assert live(background)


def test_binary_tensors_are_read_in_the_order_the_request_lists_them() -> None:
    from toolchain.core.signature import Signature, TensorSig

    signature = Signature(
        (TensorSig("ids", "int64", ("batch", 3)), TensorSig("mask", "bool", ("batch", 3))),
        (TensorSig("y", "float32", ("batch",)),),
    )
    ids, mask = np.array([[5, 6, 7]], np.int64), np.array([[True, False, True]])
    header = {
        "inputs": [
            {"name": "mask", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
            {"name": "ids", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}},
        ]
    }
    head = json.dumps(header).encode()
    decoded = decode_request(head + mask.tobytes() + ids.tobytes(), signature, Limits(), header_length=str(len(head)))
    assert list(decoded.feeds) == ["ids", "mask"]
    np.testing.assert_array_equal(decoded.feeds["ids"], ids)
    np.testing.assert_array_equal(decoded.feeds["mask"], mask)
    with pytest.raises(RequestError, match="input 'mask': BOOL bytes must be 0 or 1"):
        decode_request(head + b"\1\2\0" + ids.tobytes(), signature, Limits(), header_length=str(len(head)))
    with pytest.raises(RequestError, match="1 bytes of binary data follow the last input"):
        decode_request(head + mask.tobytes() + ids.tobytes() + b"\0", signature, Limits(), header_length=str(len(head)))
