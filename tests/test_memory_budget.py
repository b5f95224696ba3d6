"""`--max_request_bytes_in_flight`: request bodies held in memory at once, REST and gRPC together,
and what REST bodies decode into, are bounded; a request that finds no room is refused at once with
RESOURCE_EXHAUSTED (REST 429, in TF Serving's error format), and the room comes back when the
holding request is answered."""

import http.client
import json
import select
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import HALF_PLUS_TWO, wait_for

LIMIT = 4_000_000
HELD = 2_900_000  # bytes of an unfinished body the server holds while the test probes
PREDICT = "/v1/models/default:predict"


@pytest.fixture(scope="module")
def server(serve):
    return serve("default", HALF_PLUS_TWO, f"--max_request_bytes_in_flight={LIMIT}")


def instances_body(count):
    """A valid predict body of `count` instances of half_plus_two (~5 bytes each)."""
    return json.dumps({"instances": [1.0] * count}).encode()


def grpc_predict(server, count):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(count, np.float32)))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


class HeldBody:
    """A predict request whose body is sent but for its last byte: the server holds its bytes.
    The body is whitespace around one instance: it decodes into a single float."""

    BODY = b'{"instances": [1.0]' + b" " * HELD + b"}"

    def __init__(self, server):
        self.sock = socket.create_connection(("127.0.0.1", server.rest_port))
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(self.BODY)}\r\n\r\n"
        self.sock.sendall(head.encode() + self.BODY[:-1])

    def refused(self):
        """Whether the server has answered already: a request that was being answered when the
        body's last bytes arrived took their room, and the body was refused."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def finish(self):
        self.sock.sendall(self.BODY[-1:])
        answer = http.client.HTTPResponse(self.sock)
        answer.begin()
        return answer.status, json.loads(answer.read())


def test_bodies_beyond_the_budget_are_refused_until_room_comes_back(server):
    # 1.25 MB, decoding into 1 MB of floats (charged twice: here and in TensorFlow): fits alone,
    # not beside the held body.
    probe = instances_body(250_000)
    assert server.post(PREDICT, probe).status_code == 200
    held = [HeldBody(server)]

    def refusal():
        """The probe's answer in a list (a 429 response is falsy) if it was refused beside the
        held body; else None, with the held body sent again if it was the one refused."""
        if held[0].refused():
            held[0].sock.close()
            held[0] = HeldBody(server)
        resp = server.post(PREDICT, probe)
        return [resp] if resp.status_code == 429 and not held[0].refused() else None

    try:
        [refused] = wait_for("a refusal while the body is held", refusal)
        assert refused.headers["Content-Type"] == "application/json"
        assert list(refused.json()) == ["error"]
        assert f"--max_request_bytes_in_flight={LIMIT}" in refused.json()["error"]
        with pytest.raises(grpc.RpcError) as raised:
            grpc_predict(server, 300_000)  # 1.2 MB of tensor_content
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"--max_request_bytes_in_flight={LIMIT}" in raised.value.details()
        # Small requests still fit.
        assert server.post(PREDICT, {"instances": [2.0]}).json() == {"predictions": [3.0]}
        assert len(grpc_predict(server, 3).outputs["y"].float_val) == 3
        assert held[0].finish() == (200, {"predictions": [2.5]})
    finally:
        held[0].sock.close()
    # The held body was answered: its bytes are given back.
    assert server.post(PREDICT, probe).status_code == 200
    assert len(grpc_predict(server, 300_000).outputs["y"].float_val) == 300_000
    assert server.alive()


def test_a_body_larger_than_the_whole_budget_is_refused(server):
    resp = server.post(PREDICT, instances_body(LIMIT // 5 + 1))
    assert resp.status_code == 429
    assert f"--max_request_bytes_in_flight={LIMIT}" in resp.json()["error"]
    assert server.post(PREDICT, {"instances": [2.0]}).json() == {"predictions": [3.0]}


def test_what_a_body_decodes_into_is_charged(server):
    # 300 KB of empty strings decode into 100,000 of 24 bytes each, and as many in TensorFlow.
    strings = {"signature_name": "classify_x_to_y", "instances": [""] * 100_000}
    resp = server.post(PREDICT, strings)
    assert resp.status_code == 429, resp.text
    assert f"--max_request_bytes_in_flight={LIMIT}" in resp.json()["error"]
    strings["instances"] = strings["instances"][:1000]
    resp = server.post(PREDICT, strings)
    assert resp.status_code != 429, resp.text
