"""`--max_request_bytes_in_flight`: request bodies held in memory at once, REST and gRPC together,
and what they decode into, are bounded; a request that finds no room is refused at once with
RESOURCE_EXHAUSTED (REST 429, in TF Serving's error format), and the room comes back when the
holding request is answered."""

import gzip
import http.client
import json
import pathlib
import re
import select
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from conftest import HALF_PLUS_TWO, wait_for

LIMIT = 6_500_000
HELD = 3_500_000  # bytes of an unfinished body the server holds while the test probes
PREDICT = "/v1/models/default:predict"


@pytest.fixture(scope="module")
def server(serve):
    return serve("default", HALF_PLUS_TWO, f"--max_request_bytes_in_flight={LIMIT}")


def instances_body(count):
    """A valid predict body of `count` instances of half_plus_two (~5 bytes each)."""
    return json.dumps({"instances": [1.0] * count}).encode()


def grpc_call(server, method, request):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return getattr(stub, method)(request, timeout=60)


def grpc_predict(server, count):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(count, np.float32)))
    return grpc_call(server, "Predict", request)


def assert_refused_grpc(call):
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()
    assert f"--max_request_bytes_in_flight={LIMIT}" in raised.value.details()


def assert_refused_rest(resp):
    assert resp.status_code == 429, resp.text
    assert f"--max_request_bytes_in_flight={LIMIT}" in resp.json()["error"]


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
    # 1.25 MB, decoding into 1 MB of floats: charged with the decoder's buffers as they are
    # reserved (~1.7 MB, and ~0.8 MB for the second thread's half), and twice the floats before
    # they go to TensorFlow. Fits alone, not beside the held body.
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
    # 300 KB of empty strings decode into 100,000 of 24 bytes each (the decoder reserves room for
    # 150,000), and as many in TensorFlow.
    strings = {"signature_name": "classify_x_to_y", "instances": [""] * 100_000}
    resp = server.post(PREDICT, strings)
    assert resp.status_code == 429, resp.text
    assert f"--max_request_bytes_in_flight={LIMIT}" in resp.json()["error"]
    strings["instances"] = strings["instances"][:1000]
    resp = server.post(PREDICT, strings)
    assert resp.status_code != 429, resp.text


def test_grpc_tensors_are_charged_again_once_decoded(server):
    # 2.4 MB of tensor_content, held as floats here and in TensorFlow: 7.2 MB with the message.
    assert_refused_grpc(lambda: grpc_predict(server, 600_000))
    assert len(grpc_predict(server, 250_000).outputs["y"].float_val) == 250_000


PAD = "p" * 40_000  # a context feature that every serialized example repeats


def test_examples_are_charged_with_the_context_each_repeats(server):
    # A 40 KB body whose 200 examples serialize into 8 MB, and as much in TensorFlow's tensor.
    body = {"signature_name": "regress_x_to_y", "context": {"pad": PAD}, "examples": [{"x": 1.0}] * 200}
    assert_refused_rest(server.post("/v1/models/default:regress", body))
    body["examples"] = body["examples"][:10]
    assert server.post("/v1/models/default:regress", body).json() == {"results": [2.5] * 10}

    def request(count):
        request = regression_pb2.RegressionRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "regress_x_to_y"
        request.input.example_list_with_context.context.CopyFrom(
            tf.train.Example(features=tf.train.Features(feature={"pad": bytes_feature(PAD)}))
        )
        for _ in range(count):
            request.input.example_list_with_context.examples.add().features.feature["x"].float_list.value.append(1.0)
        return request

    assert_refused_grpc(lambda: grpc_call(server, "Regress", request(200)))
    answer = grpc_call(server, "Regress", request(10))
    assert [r.value for r in answer.result.regressions] == [2.5] * 10
    assert server.alive()


def bytes_feature(text):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))


def test_a_json_document_is_charged_as_it_is_built(server):
    # 300 KB of zeros in a member classify does not read: 150,000 values of 32 bytes, which the
    # document's arrays may double.
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}], "unread": [0] * 150_000}
    assert_refused_rest(server.post("/v1/models/default:regress", body))
    body["unread"] = body["unread"][:10_000]
    assert server.post("/v1/models/default:regress", body).json() == {"results": [2.5]}


def test_grpc_messages_are_charged_for_what_they_decode_into(server):
    # 300 KB of empty metadata_field strings: 150,000 Strings of 24 bytes, which the repeated
    # field may double, before the server reads them.
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    request.metadata_field.extend([""] * 150_000)
    assert_refused_grpc(lambda: grpc_call(server, "GetModelMetadata", request))
    del request.metadata_field[:]
    request.metadata_field.append("signature_def")
    assert grpc_call(server, "GetModelMetadata", request).model_spec.name == "default"


def test_a_compressed_grpc_message_is_charged_once_inflated(server):
    # A half_plus_two request with 7 MB of zeros in a field the server does not know (decoding
    # skips it): a few KB gzipped, 7 MB once inflated.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(3, np.float32)))
    unknown = varint(99 << 3 | 2)  # the key of field 99, length-delimited

    def call(padding):
        message = request.SerializeToString() + unknown + varint(padding) + bytes(padding)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", compression=grpc.Compression.Gzip) as channel:
            predict = channel.unary_unary(
                "/tensorflow.serving.PredictionService/Predict",
                request_serializer=lambda raw: raw,
                response_deserializer=predict_pb2.PredictResponse.FromString,
            )
            return predict(message, timeout=60)

    assert_refused_grpc(lambda: call(7_000_000))
    assert list(call(1_000_000).outputs["y"].float_val) == [2.5] * 3


def test_a_compressed_grpc_message_is_refused_as_it_inflates(serve):
    # 300 MB of zeros in a field the server does not know, about 300 KB gzipped, under a 50 MB
    # budget. Inflated in charged chunks, the message is refused once the budget is spent, and
    # the server's peak memory moves by about the budget; inflated first and charged after (as
    # tonic alone would), it would grow by the whole 300 MB.
    server = serve("default", HALF_PLUS_TWO, "--max_request_bytes_in_flight=50000000")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(3, np.float32)))
    padding = 300_000_000
    message = request.SerializeToString() + varint(99 << 3 | 2) + varint(padding) + bytes(padding)
    before = peak_rss_mb(server)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", compression=grpc.Compression.Gzip) as channel:
        predict = channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=lambda raw: raw,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            predict(message, timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert "--max_request_bytes_in_flight=50000000" in refused.value.details()
        del message
        assert peak_rss_mb(server) - before < 150
        answer = predict(request.SerializeToString(), timeout=60)
        assert list(answer.outputs["y"].float_val) == [2.5] * 3


def test_a_compressed_rest_body_is_refused_as_it_inflates(serve):
    # About 100 KB of gzip that inflates to 99 MB (within the 100 MiB cap), under a 10 MB budget:
    # inflated in charged pieces, it is refused once the budget is spent and the server's peak
    # memory moves by about the budget; inflated first and charged after, by the whole 99 MB.
    server = serve("default", HALF_PLUS_TWO, "--max_request_bytes_in_flight=10000000")
    body = gzip.compress(b'{"instances": [1.0]' + b" " * (99 << 20) + b"}", compresslevel=9)
    before = peak_rss_mb(server)
    resp = server.post(PREDICT, body, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 429, resp.text
    assert "--max_request_bytes_in_flight=10000000" in resp.json()["error"]
    assert peak_rss_mb(server) - before < 50
    small = gzip.compress(b'{"instances": [1.0]' + b" " * 1_000_000 + b"}")
    resp = server.post(PREDICT, small, headers={"Content-Encoding": "x-gzip"})
    assert resp.json() == {"predictions": [2.5]}
    # A GET carrying the header has no body to inflate, as in TF Serving.
    resp = server.get("/v1/models/default", headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200, resp.text


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def peak_rss_mb(server):
    status = pathlib.Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_decoding_is_refused_before_it_allocates(serve):
    # 90 MB of empty strings, within a 150 MB budget: decoded, 30 million strings of 24 bytes
    # (and the streaming decoder reserves room for 45 million). Refused as the decoder's buffers
    # and then the reference path's document grow, the server's peak memory moves by about the
    # body and the room left; decoded first and charged after, it would grow by over a GB.
    server = serve("default", HALF_PLUS_TWO, "--max_request_bytes_in_flight=150000000")
    before = peak_rss_mb(server)
    body = b'{"signature_name": "classify_x_to_y", "instances": [' + b'"",' * 30_000_000 + b'""]}'
    resp = server.post(PREDICT, body)
    assert resp.status_code == 429, resp.text
    assert "--max_request_bytes_in_flight=150000000" in resp.json()["error"]
    assert peak_rss_mb(server) - before < 500
    assert server.post(PREDICT, {"instances": [1.0]}).json() == {"predictions": [2.5]}
