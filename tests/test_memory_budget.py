"""`--max_request_bytes_in_flight`: request bodies held in memory at once, REST and gRPC together,
are bounded; a request that finds no room is refused at once with RESOURCE_EXHAUSTED (REST 429,
in TF Serving's error format), and the room comes back when the holding request is answered."""

import json
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import HALF_PLUS_TWO, wait_for

LIMIT = 3_000_000
HELD = 1_900_000  # bytes of an unfinished body the server holds while the test probes
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


def test_bodies_beyond_the_budget_are_refused_until_room_comes_back(server):
    probe = instances_body(250_000)  # 1.25 MB: fits alone, not beside the held body
    assert 1_000_000 < len(probe) < LIMIT - HELD + 1_000_000
    assert server.post(PREDICT, probe).status_code == 200
    body = instances_body(HELD // 5 + 10_000)
    held = socket.create_connection(("127.0.0.1", server.rest_port))
    try:
        held.sendall(
            f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:HELD]
        )
        # A list: a 429 response itself is falsy.
        [refused] = wait_for("a refusal while the body is held", lambda: [
            resp for resp in [server.post(PREDICT, probe)] if resp.status_code == 429
        ])
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
        held.sendall(body[HELD:])
        answer = held.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        held.close()
    # The held body was answered: its bytes are given back.
    assert server.post(PREDICT, probe).status_code == 200
    assert len(grpc_predict(server, 300_000).outputs["y"].float_val) == 300_000
    assert server.alive()


def test_a_body_larger_than_the_whole_budget_is_refused(server):
    resp = server.post(PREDICT, instances_body(LIMIT // 5 + 1))
    assert resp.status_code == 429
    assert f"--max_request_bytes_in_flight={LIMIT}" in resp.json()["error"]
    assert server.post(PREDICT, {"instances": [2.0]}).json() == {"predictions": [3.0]}
