"""Dynamic batching (--enable_batching) with TF Serving's semantics, against the real binary.

Correctness only, never speed: concurrent requests of different sizes get exactly their own rows
back (compared with unbatched answers), padding to allowed_batch_sizes, queue-full rejection
(REST 503 / gRPC UNAVAILABLE), gRPC calls waiting for their batch not holding a
--grpc_max_threads slot, per-model parameters, classify/regress through the batcher,
deadlines while queued, TF Serving's batching metrics, and bad batching files refused at start-up.

Whether requests really were merged is read from the server's debug log ("running a batch
requests=N rows=R padded=P"), which the batcher writes for every batch it runs.
"""

import concurrent.futures
import os
import re
import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import (
    BIN,
    DEMO,
    DTYPES_MODEL,
    HALF_PLUS_TWO,
    MONITORING_CONFIG,
    TESTDATA,
    assert_failed_start,
    expected_outputs,
    metric,
    metric_families,
    run_cli,
    save_busy_model,
    wait_for,
)

TOLERANCE = 1e-5
ENV = {**os.environ, "RUST_LOG": "info,oxserve_core::batching=debug", "NO_COLOR": "1"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BATCH_LINE = re.compile(r"running a batch requests=(\d+) rows=(\d+) padded=(\d+)")


@pytest.fixture(scope="module")
def servers(serve):
    """serve(name, base_path, *flags) -> Server with the batcher's debug log."""
    return lambda name, base_path, *flags: serve(name, base_path, *flags, env=ENV)


def params_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("batching") / "batching_parameters.txt"
    path.write_text(text)
    return path


def batches(server):
    """(requests, rows, padded) of every batch the server ran so far."""
    log = ANSI.sub("", server.log())
    return [tuple(map(int, m.groups())) for m in BATCH_LINE.finditer(log)]


def post_all(server, path, bodies, workers=16):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda body: server.post(path, body), bodies))


# ---- half_plus_two: y = 0.5 x + 2


@pytest.fixture(scope="module")
def hpt_batched(servers, tmp_path_factory):
    # One batch thread and a batch timeout: concurrent requests pile up and are merged.
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 100000 }\n"
        "max_enqueued_batches { value: 1000 }\n"
        "num_batch_threads { value: 1 }\n",
    )
    return servers("half_plus_two", HALF_PLUS_TWO, "--enable_batching", f"--batching_parameters_file={params}")


@pytest.fixture(scope="module")
def hpt_plain(servers):
    return servers("half_plus_two", HALF_PLUS_TWO)


def test_concurrent_requests_of_different_sizes_get_their_own_rows(hpt_batched, hpt_plain):
    bodies = []
    for i in range(48):
        size = 1 + i % 8
        bodies.append({"instances": [float(i * 100 + k) for k in range(size)]})
    path = "/v1/models/half_plus_two:predict"
    batched = post_all(hpt_batched, path, bodies)
    plain = post_all(hpt_plain, path, bodies)
    for body, got, want in zip(bodies, batched, plain):
        assert got.status_code == 200, got.text
        assert got.json() == want.json()
        assert got.json()["predictions"] == [0.5 * x + 2 for x in body["instances"]]
    merged = [b for b in batches(hpt_batched) if b[0] > 1]
    assert merged, f"no batch held more than one request: {batches(hpt_batched)}"
    assert sum(b[1] for b in batches(hpt_batched)) >= sum(len(b["instances"]) for b in bodies)


def test_columnar_and_row_requests_batch_together(hpt_batched):
    bodies = [{"inputs": {"x": [float(i), float(i + 1)]}} if i % 2 else {"instances": [float(i)]} for i in range(20)]
    for body, resp in zip(bodies, post_all(hpt_batched, "/v1/models/half_plus_two:predict", bodies)):
        assert resp.status_code == 200, resp.text
        if "inputs" in body:
            assert resp.json() == {"outputs": [0.5 * x + 2 for x in body["inputs"]["x"]]}
        else:
            assert resp.json() == {"predictions": [0.5 * x + 2 for x in body["instances"]]}


def test_regress_and_classify_go_through_the_batcher(hpt_batched, hpt_plain):
    before = len(batches(hpt_batched))
    regress = [
        {"signature_name": "regress_x_to_y", "examples": [{"x": float(i + k)} for k in range(1 + i % 3)]}
        for i in range(24)
    ]
    for body, resp in zip(regress, post_all(hpt_batched, "/v1/models/half_plus_two:regress", regress)):
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"results": [0.5 * e["x"] + 2 for e in body["examples"]]}
    classify = [
        {"signature_name": "classify_x_to_y", "examples": [{"x": float(i)}, {"x": float(-i)}]} for i in range(12)
    ]
    batched = post_all(hpt_batched, "/v1/models/half_plus_two:classify", classify)
    plain = post_all(hpt_plain, "/v1/models/half_plus_two:classify", classify)
    for got, want in zip(batched, plain):
        assert got.status_code == 200, got.text
        assert got.json() == want.json()
    assert len(batches(hpt_batched)) > before


def test_inputs_without_a_batch_dimension_are_refused(hpt_batched):
    resp = hpt_batched.post("/v1/models/half_plus_two:predict", {"inputs": {"x": 1.0}})
    assert resp.status_code == 400
    assert resp.json()["error"] == "Batching Run() input tensors must have at least one dimension"


# ---- the Planet CNN: one image per request, merged, padded, split back


@pytest.fixture(scope="module")
def planet_expected():
    model = expected_outputs()["models"]["planet"]
    images = model["inputs"]["image"]["value"]
    return images, model["outputs"]


@pytest.fixture(scope="module")
def planet_batched(servers, tmp_path_factory):
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 50000 }\n"
        "num_batch_threads { value: 1 }\n"
        "allowed_batch_sizes: 2\n"
        "allowed_batch_sizes: 4\n"
        "allowed_batch_sizes: 8\n",
    )
    return servers("planet", DEMO / "planet", "--enable_batching", f"--batching_parameters_file={params}")


def assert_close(actual, expected):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected)) <= TOLERANCE


def test_planet_concurrent_requests_get_their_own_images_back(planet_batched, planet_expected):
    images, outputs = planet_expected
    # Single images, pairs and the full set, in both formats, concurrently.
    picks = [[i] for i in range(3)] * 4 + [[0, 2], [2, 1], [0, 1, 2]] * 2
    bodies = [
        {"instances": [images[i] for i in pick]} if n % 2 else {"inputs": {"image": [images[i] for i in pick]}}
        for n, pick in enumerate(picks)
    ]
    responses = post_all(planet_batched, "/v1/models/planet:predict", bodies)
    for pick, body, resp in zip(picks, bodies, responses):
        assert resp.status_code == 200, resp.text
        for alias in ("weather", "ground"):
            want = [outputs[alias]["value"][i] for i in pick]
            if "instances" in body:
                assert_close([row[alias] for row in resp.json()["predictions"]], want)
            else:
                assert_close(resp.json()["outputs"][alias], want)
    assert any(b[0] > 1 for b in batches(planet_batched)), batches(planet_batched)


def test_planet_batches_are_padded_to_allowed_sizes(planet_batched, planet_expected):
    images, outputs = planet_expected
    before = len(batches(planet_batched))
    resp = planet_batched.post("/v1/models/planet:predict", {"instances": images})
    assert resp.status_code == 200, resp.text
    for alias in ("weather", "ground"):
        assert_close([row[alias] for row in resp.json()["predictions"]], outputs[alias]["value"])
    ran = batches(planet_batched)[before:]
    assert ran == [(1, 3, 4)], ran
    # Every batch ever run was padded to an allowed size.
    assert all(padded in (2, 4, 8) and padded >= rows for _, rows, padded in batches(planet_batched))
    # Larger than max_batch_size: refused, as TF Serving does.
    resp = planet_batched.post("/v1/models/planet:predict", {"instances": [images[0]] * 9})
    assert resp.status_code == 400
    assert resp.json()["error"] == "Task size 9 is larger than maximum input batch size 8"


# ---- every dtype, and padding variable-length inputs (the dtypes model's identity signatures)


@pytest.fixture(scope="module")
def dtypes_batched(servers, tmp_path_factory):
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 200000 }\n"
        "num_batch_threads { value: 1 }\n"
        "pad_variable_length_inputs: true\n",
    )
    return servers("dtypes", DTYPES_MODEL, "--enable_batching", f"--batching_parameters_file={params}")


@pytest.mark.parametrize(
    "dtype, value",
    [("float16", lambda i: i + 0.5), ("bfloat16", lambda i: i + 0.5), ("float64", lambda i: i / 3),
     ("int8", lambda i: i - 8), ("uint64", lambda i: 2**63 + i), ("bool", lambda i: i % 3 == 0),
     ("string", lambda i: "x" * i)],
)
def test_every_dtype_batches(dtypes_batched, dtype, value):
    before = len(batches(dtypes_batched))
    bodies = [
        {"signature_name": f"identity_{dtype}", "instances": [value(i + k) for k in range(1 + i % 3)]}
        for i in range(12)
    ]
    for body, resp in zip(bodies, post_all(dtypes_batched, "/v1/models/dtypes:predict", bodies)):
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"predictions": body["instances"]}
    assert any(requests > 1 for requests, _, _ in batches(dtypes_batched)[before:]), batches(dtypes_batched)


def test_padding_does_not_multiply_requests_wide_in_different_dimensions(dtypes_batched):
    # Merged, [1, n, 1, 1], [1, 1, n, 1] and [1, 1, 1, n] would each be padded to [1, n, n, n]:
    # 16 TiB of floats. Each runs in a batch of its own instead; narrower requests still join one.
    n = 16384
    shapes = [(1, n, 1, 1), (1, 1, n, 1), (1, 1, 1, n), (1, 1, 1, n // 2)]
    inputs = [np.arange(np.prod(shape), dtype=np.float32).reshape(shape) for shape in shapes]
    bodies = [{"signature_name": "identity_float32", "inputs": x.tolist()} for x in inputs]
    before = len(batches(dtypes_batched))
    answers = post_all(dtypes_batched, "/v1/models/dtypes:predict", bodies)
    for x, resp in zip(inputs[:3], answers):
        assert resp.status_code == 200, resp.text
        assert np.array_equal(np.array(resp.json()["outputs"], dtype=np.float32), x)
    # The narrow one comes back padded (with its first element) if it shared a batch.
    narrow = np.array(answers[3].json()["outputs"], dtype=np.float32)
    assert np.array_equal(narrow[..., : n // 2], inputs[3])
    assert not narrow[..., n // 2 :].any()
    ran = batches(dtypes_batched)[before:]
    assert sum(requests for requests, _, _ in ran) == 4, ran
    assert dtypes_batched.get("/v1/models/dtypes").status_code == 200


def test_a_split_request_padded_apart_comes_back_at_one_width(servers, tmp_path_factory):
    # Split into pieces of at most 2 rows, a [3, 2] request shares one batch with a [1, 5] one
    # (that piece is padded to width 5) and runs the other at width 2: its answer is one [3, 5]
    # tensor, each piece padded with its own first value (identity model).
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 8 }\n"
        "batch_timeout_micros { value: 2000000 }\n"
        "num_batch_threads { value: 1 }\n"
        "pad_variable_length_inputs: true\n"
        "enable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 2 }\n",
    )
    server = servers("dtypes", DTYPES_MODEL, "--enable_batching", f"--batching_parameters_file={params}")
    split = {"signature_name": "identity_float32", "inputs": [[0, 1], [2, 3], [4, 5]]}
    wide = {"signature_name": "identity_float32", "inputs": [[10, 11, 12, 13, 14]]}
    cases = [
        # The split request first: its 2-row piece runs at once (a full batch), its last row waits
        # and is padded next to the wide request.
        (True, [[0, 1, 0, 0, 0], [2, 3, 0, 0, 0], [4, 5, 4, 4, 4]]),
        # The wide request first: the split request's first row joins it.
        (False, [[0, 1, 0, 0, 0], [2, 3, 2, 2, 2], [4, 5, 2, 2, 2]]),
    ]
    for split_first, want in cases:
        first, second = (split, wide) if split_first else (wide, split)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a = pool.submit(server.post, "/v1/models/dtypes:predict", first)
            time.sleep(0.5)  # queued well before the batch timeout (2 s)
            b = pool.submit(server.post, "/v1/models/dtypes:predict", second)
            answers = {id(first): a.result(), id(second): b.result()}
        split_answer, wide_answer = answers[id(split)], answers[id(wide)]
        assert split_answer.status_code == 200, (split_first, split_answer.text)
        assert split_answer.json() == {"outputs": want}, split_first
        assert wide_answer.json() == {"outputs": wide["inputs"]}


# ---- a full queue answers UNAVAILABLE at once


@pytest.fixture(scope="module")
def tiny_queue(servers, tmp_path_factory):
    # A batch of 4 rows at most, one batch in the queue, and a long batch timeout: a 3-row
    # request waits in the open batch; a 2-row request then needs a second batch and is refused.
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 4 }\n"
        "batch_timeout_micros { value: 1500000 }\n"
        "max_enqueued_batches { value: 1 }\n"
        "num_batch_threads { value: 1 }\n",
    )
    return servers("half_plus_two", HALF_PLUS_TWO, "--enable_batching", f"--batching_parameters_file={params}")


FULL = "The batch scheduling queue to which this task was submitted is full"


def test_full_queue_is_rest_503(tiny_queue):
    path = "/v1/models/half_plus_two:predict"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(tiny_queue.post, path, {"instances": [1.0, 2.0, 3.0]})
        time.sleep(0.3)  # usually enough for the first to be queued; either order is checked below
        second = pool.submit(tiny_queue.post, path, {"instances": [4.0, 5.0]})
        responses = [first.result(), second.result()]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 503], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json() == {"error": FULL}
    served = next(r for r in responses if r.status_code == 200)
    assert len(served.json()["predictions"]) in (2, 3)


def test_full_queue_is_grpc_unavailable(tiny_queue):
    channel = grpc.insecure_channel(f"127.0.0.1:{tiny_queue.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def predict(values):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(values, dtype=np.float32)))
        try:
            response = stub.Predict(request, timeout=60)
            return "OK", tf.make_ndarray(response.outputs["y"]).tolist()
        except grpc.RpcError as err:
            return err.code(), err.details()

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(predict, [1.0, 2.0, 3.0])
            time.sleep(0.3)
            second = pool.submit(predict, [4.0, 5.0])
            results = [first.result(), second.result()]
    finally:
        channel.close()
    codes = [code for code, _ in results]
    assert sorted(map(str, codes)) == sorted(map(str, ["OK", grpc.StatusCode.UNAVAILABLE])), results
    assert (grpc.StatusCode.UNAVAILABLE, FULL) in results


def test_grpc_calls_waiting_for_a_batch_do_not_count_against_grpc_max_threads(servers, tmp_path_factory):
    # One gRPC call slot, and a batch that runs only once it holds 4 requests (the timeout is far
    # beyond the calls' deadline): the 4 calls meet in one batch only if each one queued gives
    # its slot to the next. If they did not, the first would wait alone until its deadline.
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 60000000 }\nnum_batch_threads { value: 1 }\n",
    )
    server = servers(
        "half_plus_two",
        HALF_PLUS_TWO,
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--grpc_max_threads=1",
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def predict(value):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([value], dtype=np.float32)))
        response = stub.Predict(request, timeout=20)
        return tf.make_ndarray(response.outputs["y"]).tolist()

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(predict, [1.0, 2.0, 3.0, 4.0]))
    finally:
        channel.close()
    assert answers == [[2.5], [3.0], [3.5], [4.0]]
    assert batches(server) == [(4, 4, 4)]


def test_too_large_a_request_is_invalid(tiny_queue):
    resp = tiny_queue.post("/v1/models/half_plus_two:predict", {"instances": [1.0] * 5})
    assert resp.status_code == 400
    assert resp.json() == {"error": "Task size 5 is larger than maximum input batch size 4"}


def test_rest_timeout_applies_while_queued(servers, tmp_path_factory):
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 3000000 }\nnum_batch_threads { value: 1 }\n",
    )
    server = servers(
        "half_plus_two",
        HALF_PLUS_TWO,
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--rest_api_timeout_in_ms=200",
    )
    resp = server.post("/v1/models/half_plus_two:predict", {"instances": [1.0]})
    assert resp.status_code == 504, resp.text
    # Once the batch timeout passed, the expired request was left out: no batch ran.
    time.sleep(3.5)
    assert batches(server) == []
    assert server.alive()


def test_a_batch_stops_running_once_its_callers_deadlines_passed(servers, tmp_path_factory):
    # One batch thread: a batch still spinning for callers who have gone would hold it, and every
    # request behind it would wait. The batch gets the latest of its callers' deadlines as its
    # RunOptions timeout, as in TF Serving, so TensorFlow stops the 60 s loop at 2 s.
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 1 }\n",
    )
    base = tmp_path_factory.mktemp("busy")
    save_busy_model(base)
    server = servers("busy", base, "--enable_batching", f"--batching_parameters_file={params}")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def spin(seconds, timeout):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "busy"
        request.inputs["seconds"].CopyFrom(tf.make_tensor_proto(np.array([seconds], dtype=np.float64)))
        return stub.Predict(request, timeout=timeout)

    try:
        with pytest.raises(grpc.RpcError) as expired:
            spin(60.0, timeout=2)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        response = spin(0.0, timeout=30)
        assert tf.make_ndarray(response.outputs["y"]).tolist() == [0.0]
    finally:
        channel.close()


# ---- large batch splitting


def test_large_requests_are_split_with_enable_large_batch_splitting(servers, tmp_path_factory):
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 64 }\n"
        "enable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 4 }\n"
        "num_batch_threads { value: 1 }\n",
    )
    server = servers("half_plus_two", HALF_PLUS_TWO, "--enable_batching", f"--batching_parameters_file={params}")
    values = [float(v) for v in range(11)]
    resp = server.post("/v1/models/half_plus_two:predict", {"instances": values})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [0.5 * v + 2 for v in values]}
    assert sorted(rows for _, rows, _ in batches(server)) == [3, 4, 4]


# ---- metrics


def test_batching_metrics_have_tf_serving_names(servers, tmp_path_factory):
    # Batches of at most 4 rows, padded to 2 or 4, that run only when full or closed (the timeout
    # is beyond the test): what is queued and what ran is known exactly at every step.
    params = params_file(
        tmp_path_factory,
        "max_batch_size { value: 4 }\n"
        "batch_timeout_micros { value: 600000000 }\n"
        "num_batch_threads { value: 1 }\n"
        "allowed_batch_sizes: 2\n"
        "allowed_batch_sizes: 4\n",
    )
    server = servers(
        "half_plus_two",
        HALF_PLUS_TWO,
        "--enable_batching",
        f"--batching_parameters_file={params}",
        f"--monitoring_config_file={MONITORING_CONFIG}",
    )
    path = "/v1/models/half_plus_two:predict"
    version_dir = str(HALF_PLUS_TWO / "00000123")
    queued = ":oxserve:batching:queued_calls"

    def queued_calls():
        return metric(metric_families(server), queued, model_path=version_dir)

    def post(values):
        return server.post(path, {"instances": values})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = [pool.submit(post, [1.0]), pool.submit(post, [2.0, 3.0])]
        wait_for("2 calls queued", lambda: queued_calls() == 2)
        # 2 more rows do not fit: the 3-row batch closes and runs, padded to 4; these wait.
        third = pool.submit(post, [4.0, 5.0])
        answers = [f.result() for f in first]
        wait_for("1 call queued", lambda: queued_calls() == 1)
        # The open batch is now full (4 rows): it runs without padding.
        fourth = pool.submit(post, [6.0, 7.0])
        answers += [third.result(), fourth.result()]
    assert [a.json() for a in answers] == [
        {"predictions": [0.5 * v + 2 for v in values]} for values in ([1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0])
    ]
    assert batches(server) == [(2, 3, 4), (2, 4, 4)]

    families = metric_families(server)
    assert queued_calls() == 0
    prefix = ":tensorflow:serving:batching_session:"

    def histogram(name, **labels):
        family = prefix + name
        assert families[family].type == "histogram"
        return (
            metric(families, family, family + "_count", **labels),
            metric(families, family, family + "_sum", **labels),
        )

    # One sample per input tensor of each call: its rows.
    assert histogram("input_batch_size") == (4, 7)
    # One sample per batch: its rows with padding, and the padding by padded size.
    assert histogram("processed_batch_size") == (2, 8)
    assert histogram("padding_size", execution_batch_size="4") == (2, 1)
    # TF's Buckets::Exponential(1, 2, 14): 14 finite bounds, 1 to 2^13, then +Inf.
    bounds = [s.labels["le"] for s in families[prefix + "padding_size"].samples
              if s.name.endswith("_bucket") and s.labels["execution_batch_size"] == "4"]
    assert bounds == [str(2**i) for i in range(14)] + ["+Inf"]
    # One sample per call, in microseconds; the first two calls waited for the polls above.
    count, waited = histogram("queuing_latency", thread_pool_name="")
    assert count == 4 and waited > 0


# ---- per-model parameters


@pytest.fixture(scope="module")
def per_model_copy(tmp_path_factory):
    base = tmp_path_factory.mktemp("per_model") / "half_plus_two"
    shutil.copytree(HALF_PLUS_TWO, base)
    (base / "00000123" / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }\n")
    return base


def test_per_model_parameters_replace_the_servers(servers, tmp_path_factory, per_model_copy):
    params = params_file(tmp_path_factory, "max_batch_size { value: 64 }\n")
    server = servers(
        "half_plus_two",
        per_model_copy,
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--enable_per_model_batching_parameters",
    )
    resp = server.post("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0]})
    assert resp.json() == {"predictions": [2.5, 3.0]}
    resp = server.post("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 3.0]})
    assert resp.status_code == 400
    assert resp.json() == {"error": "Task size 3 is larger than maximum input batch size 2"}


def test_per_model_parameters_without_a_file_mean_no_batching(servers, tmp_path_factory):
    params = params_file(tmp_path_factory, "max_batch_size { value: 2 }\n")
    server = servers(
        "half_plus_two",
        HALF_PLUS_TWO,
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--enable_per_model_batching_parameters",
    )
    resp = server.post("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 3.0]})
    assert resp.status_code == 200, resp.text
    assert batches(server) == []


# ---- bad batching configuration is refused at start-up


def serve_fails(*flags, base=HALF_PLUS_TWO):
    proc = run_cli(
        "serve", "--rest_api_port=0", "--port=0", f"--model_base_path={base}", "--model_name=m", *flags, timeout=60
    )
    assert_failed_start(proc)
    return ANSI.sub("", proc.stdout + proc.stderr)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\n",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8",
        ),
        ("allowed_batch_sizes: 4\nallowed_batch_sizes: 2\n", "allowed_batch_sizes entries must be monotonically increasing"),
        ("num_batch_threads { value: 0 }\n", "num_batch_threads must be positive; was 0"),
        ("batch_timeout_micros { value: -5 }\n", "batch_timeout_micros must be non-negative; was -5"),
        ("max_batch_size { value: 8\n", "Could not parse BatchingParameters"),
        ("max_batch_sise { value: 8 }\n", "Could not parse BatchingParameters"),
    ],
)
def test_bad_batching_parameters_file_is_refused(tmp_path_factory, text, message):
    path = params_file(tmp_path_factory, text)
    output = serve_fails("--enable_batching", f"--batching_parameters_file={path}")
    assert message in output
    assert str(path) in output


def test_missing_batching_parameters_file_is_refused(tmp_path):
    output = serve_fails("--enable_batching", f"--batching_parameters_file={tmp_path / 'nope.txt'}")
    assert "Could not read batching parameters file" in output


def test_batching_parameters_file_needs_enable_batching():
    output = serve_fails(f"--batching_parameters_file={TESTDATA / 'batching_config.txt'}")
    assert "Batching parameters file provided but batching not enabled" in output


def test_bad_per_model_parameters_fail_the_model_load(tmp_path):
    base = tmp_path / "half_plus_two"
    shutil.copytree(HALF_PLUS_TWO, base)
    (base / "00000123" / "batching_params.pbtxt").write_text("max_batch_size { value: 4 }\nallowed_batch_sizes: 2\n")
    # The load fails (the manager may retry it, as TF Serving does): wait for the error in the log.
    log_path = tmp_path / "oxserve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--rest_api_port=0", "--port=0", f"--model_base_path={base}", "--model_name=m",
             "--enable_batching", "--enable_per_model_batching_parameters"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        expected = "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 2; expected 4"
        for _ in range(600):
            output = ANSI.sub("", log_path.read_text(errors="replace"))
            if expected in output or proc.poll() is not None:
                break
            time.sleep(0.1)
        output = ANSI.sub("", log_path.read_text(errors="replace"))
        assert expected in output, output
        assert "batching_params.pbtxt" in output
        assert "model available" not in output
    finally:
        proc.kill()
        proc.wait()


def test_tf_serving_batching_config_fixture_serves(servers):
    server = servers(
        "half_plus_two",
        HALF_PLUS_TWO,
        "--enable_batching",
        f"--batching_parameters_file={TESTDATA / 'batching_config.txt'}",
    )
    resp = server.post("/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}
