"""Malformed requests get TF Serving's 4xx answers, and the server keeps serving afterwards."""

import base64
import gzip
import json
import socket
import time

import pytest
import requests

from conftest import HALF_PLUS_TWO

PREDICT = "/v1/models/default:predict"


@pytest.fixture(scope="module")
def server(serve):
    return serve("default", HALF_PLUS_TWO)


def error_of(resp):
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert list(body) == ["error"], body
    return body["error"]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{", 400, "JSON Parse error"),
        (b"", 400, "JSON Parse error"),
        (b"not json", 400, "JSON Parse error"),
        (b'{"instances": [1.0,]}', 400, "JSON Parse error"),
        (b'{"foo": [1.0]}', 400, "Missing 'inputs' or 'instances' key"),
        (b'{"instances": [1.0], "inputs": [1.0]}', 400, "inputs"),
        (b'{"signature_name": 5, "instances": [1.0]}', 400,
         "'signature_name' key must be a string value."),
        (b'{"instances": ["a"]}', 400, "is not of expected type: float"),
        (b'{"instances": [true]}', 400, "is not of expected type: float"),
        (b'{"instances": [[1.0], [1.0, 2.0]]}', 400, ""),
        (b'{"instances": 1.0}', 400, ""),
        (b'{"inputs": {"y": [1.0]}}', 400, ""),
        (b'{"instances": [{"x": [1.0], "z": [2.0]}]}', 400, ""),
        (b'{"signature_name": "nope", "instances": [1.0]}', 400,
         'Serving signature name: "nope" not found in signature def'),
        (b'{"signature_name": "classify_x_to_y", "instances": [{"b64": "!!not base64!!"}]}', 400, ""),
        (b'{"instances": [1e999999]}', 400, ""),
        (b"\xff\xfe\x00garbage", 400, ""),
        (b"[" * 100000, 400, ""),
        (b'{"instances": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}", 400, ""),
    ],
)
def test_malformed_predict_bodies(server, body, status, message):
    resp = server.post(PREDICT, body)
    assert resp.status_code == status, resp.text
    assert message in error_of(resp)


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        ("POST", "/v1/models/default/versions/7:predict", 404,
         "Servable not found for request: Specific(default, 7)"),
        ("POST", "/v1/models/default/labels/stable:predict", 400,
         "Unrecognized servable version label: stable"),
        ("POST", "/v1/models/default/versions/abc:predict", 400,
         "Malformed request: POST /v1/models/default/versions/abc:predict"),
        ("POST", "/v1/models/default:explain", 400, "Malformed request: POST /v1/models/default:explain"),
        ("GET", "/v1/models/default:predict", 400, "Malformed request: GET /v1/models/default:predict"),
        ("PUT", "/v1/models/default", 400, "Malformed request: PUT /v1/models/default"),
        ("GET", "/v1/models/default/versions/99999999999999999999", 400,
         "Failed to convert version: 99999999999999999999 to numeric."),
        # (`GET /v1/models`, an error in TF Serving, lists the models: see test_lifecycle.py.)
        ("GET", "/v1/models/labels/x", 400, "Missing model name in request."),
    ],
)
def test_bad_paths(server, method, path, status, message):
    resp = requests.request(method, server.url(path), data=b'{"instances": [1.0]}', timeout=30)
    assert resp.status_code == status, resp.text
    assert error_of(resp) == message


def test_classify_with_bad_examples(server):
    for body in [
        b'{"examples": 5}',
        b'{"examples": [5]}',
        b'{"signature_name": "classify_x_to_y", "examples": []}',
        b'{"signature_name": "classify_x_to_y"}',
        b'{"signature_name": "classify_x_to_y", "examples": [{"x": {"b64": "%%%"}}]}',
        b'{"signature_name": "classify_x_to_y", "examples": [{"x": [1.0, "a"]}]}',
    ]:
        resp = server.post("/v1/models/default:classify", body)
        assert resp.status_code == 400, (body, resp.text)
        error_of(resp)


def test_wrong_signature_for_regress(server):
    body = {"signature_name": "serving_default", "examples": [{"x": 1.0}]}
    resp = server.post("/v1/models/default:regress", body)
    assert resp.status_code == 400
    assert "No regression inputs found in SignatureDef" in error_of(resp)


def test_unknown_content_encoding(server):
    resp = server.post(PREDICT, b'{"instances": [1.0]}', headers={"Content-Encoding": "br"})
    assert resp.status_code == 415
    error_of(resp)


def test_corrupt_gzip_body(server):
    resp = server.post(PREDICT, b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 400
    assert "gzip" in error_of(resp)


def test_gzip_bomb_is_refused(server):
    # About 100 KiB on the wire, 101 MiB inflated: over TF Serving's 100 MiB cap.
    body = gzip.compress(b" " * (101 << 20), compresslevel=9)
    resp = server.post(PREDICT, body, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 413
    error_of(resp)


def test_oversized_body_is_refused(server):
    body = b'{"instances": [' + b"1.0," * (27 << 20) + b"1.0]}"
    resp = server.post(PREDICT, body)
    assert resp.status_code == 413


def test_connections_that_stop_sending_are_closed(server):
    """A connection that sends nothing, or not enough to tell HTTP/1 from HTTP/2, one that sent
    HTTP/2's preface and no request, a request head that never ends, an idle keep-alive connection
    (HTTP/1 or HTTP/2) and a body that stops coming are each ended after 30 s (a client holding many
    such connections would otherwise use up the server's file descriptors); the stalled body gets a
    408 first. So are connections whose client stops taking its answer (which would otherwise be
    held in memory)."""

    def connect():
        return socket.create_connection(("127.0.0.1", server.rest_port), timeout=60)

    silent = connect()
    undecided = connect()
    undecided.sendall(b"PRI * HTTP/2.0")
    http2 = connect()
    http2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    partial_head = connect()
    partial_head.sendall(b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\n")
    idle = connect()
    idle.sendall(b"GET /v1/models/default HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    stalled_body = connect()
    stalled_body.sendall(
        b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inst"
    )
    # HTTP/2, by hand: a GET as HPACK literals (`:path` and `:authority` by their static index).
    path = b"/v1/models/default"
    get = b"\x82\x86\x04" + bytes([len(path)]) + path + b"\x01\x01x"
    get_frame = len(get).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + get
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    # Answered, then silent: HTTP/2 has no keep-alive timer of its own.
    http2_idle = connect()
    http2_idle.sendall(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + get_frame)
    # A flow-control window of 0: the answer can never be sent.
    http2_stalled = connect()
    http2_stalled.sendall(preface + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00" + get_frame)
    # An answer far larger than the socket buffers, never read: held by the server until closed.
    unread = socket.socket()
    unread.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    unread.settimeout(60)
    unread.connect(("127.0.0.1", server.rest_port))
    big = b'{"instances": [' + b"1.0," * 2_000_000 + b"1.0]}"
    unread.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n\r\n".encode() + big)
    start = time.monotonic()

    def rest_of(connection):
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received

    assert rest_of(silent) == b""
    assert rest_of(undecided) == b""
    rest_of(http2)  # the server's SETTINGS, then the end
    assert rest_of(partial_head) == b""
    assert rest_of(idle) == b""
    answer = rest_of(stalled_body)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"stopped arriving" in answer
    assert b'"AVAILABLE"' in rest_of(http2_idle)
    assert b'"AVAILABLE"' not in rest_of(http2_stalled)
    assert time.monotonic() - start < 50
    # Read only once the server has given up on it: what it had written, not the whole answer.
    time.sleep(max(0.0, start + 45 - time.monotonic()))
    answer = rest_of(unread)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert not answer.endswith(b"]\n}"), len(answer)
    assert server.post(PREDICT, {"instances": [1.0]}).json() == {"predictions": [2.5]}


def test_a_client_that_stops_sending_after_its_request_gets_the_answer(server):
    """`nc -N` and some probes shut down their sending side once the request is out."""
    body = b'{"instances": [1.0, 2.0]}'
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
            connection.sendall(head + body)
            connection.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"[2.5, 3.0\n    ]\n}"), answer


def test_broken_chunked_framing_is_a_bad_request(server):
    head = b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(head + b"zz\r\n{}\r\n0\r\n\r\n")
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Could not read the request body" in answer


def test_server_still_serves_after_the_corpus(server):
    for _ in range(3):
        resp = server.post(PREDICT, {"instances": [1.0, 2.0, 5.0]})
        assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert server.alive()
    assert "panicked" not in server.log()


def test_b64_input_round_trips_binary_bytes(server):
    # Bytes that are not UTF-8, fed to a string input: the model rejects them as a tf.Example,
    # but the server must get them there intact and answer with an error, not crash.
    raw = bytes(range(256))
    body = {"signature_name": "classify_x_to_y", "instances": [{"b64": base64.b64encode(raw).decode()}]}
    resp = server.post(PREDICT, json.dumps(body))
    assert resp.status_code == 400
    error_of(resp)
