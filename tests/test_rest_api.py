"""TF Serving's REST API on TF Serving's own test models, with the answers TF Serving gives."""

import base64
import gzip
import json

import pytest
import requests

from conftest import (
    HALF_PLUS_THREE,
    HALF_PLUS_TWO,
    HALF_PLUS_TWO_TF2,
    TWO_VERSIONS,
    load_golden,
    tf2_metadata_golden,
)


@pytest.fixture(scope="module")
def hpt(serve):
    """half_plus_two (TF1), served under TF Serving's default model name."""
    return serve("default", HALF_PLUS_TWO)


@pytest.fixture(scope="module")
def tf2(serve):
    return serve("half_plus_two_tf2", HALF_PLUS_TWO_TF2)


def status_body(version):
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


# ---- model status


def test_status(hpt):
    resp = hpt.get("/v1/models/default")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == status_body(123)


def test_status_of_a_version(hpt):
    assert hpt.get("/v1/models/default/versions/123").json() == status_body(123)


def test_status_path_is_case_insensitive(hpt):
    assert hpt.get("/V1/MODELS/default").json() == status_body(123)


def test_status_of_unknown_version(hpt):
    resp = hpt.get("/v1/models/default/versions/7")
    assert resp.status_code == 404
    assert resp.json() == {"error": "Could not find version 7 of model default"}


def test_status_of_unknown_model(hpt):
    resp = hpt.get("/v1/models/nope")
    assert resp.status_code == 404
    assert resp.json() == {"error": "Could not find any versions of model nope"}


def test_latest_of_two_versions_is_loaded(serve):
    server = serve("two", TWO_VERSIONS)
    assert server.get("/v1/models/two").json() == status_body(124)


# ---- model metadata


def test_metadata_matches_tf_serving_golden(hpt):
    resp = hpt.get("/v1/models/default/metadata")
    assert resp.status_code == 200
    assert resp.json() == load_golden("half_plus_two_model_metadata.json")


def test_metadata_of_a_version(hpt):
    body = hpt.get("/v1/models/default/versions/123/metadata").json()
    assert body == load_golden("half_plus_two_model_metadata.json")


def test_metadata_of_the_two_version_model_matches_golden(serve):
    server = serve("saved_model_half_plus_two_2_versions", TWO_VERSIONS)
    golden = load_golden("saved_model_half_plus_two_2_versions_metadata.json")
    # The golden file was taken from version 123; version 124 (the latest) has the same signatures.
    golden["model_spec"]["version"] = "124"
    assert server.get("/v1/models/saved_model_half_plus_two_2_versions/metadata").json() == golden


def test_tf2_metadata_matches_golden(tf2):
    golden = tf2_metadata_golden()
    golden["model_spec"]["name"] = "half_plus_two_tf2"
    assert tf2.get("/v1/models/half_plus_two_tf2/metadata").json() == golden


def test_metadata_of_unknown_model(hpt):
    resp = hpt.get("/v1/models/nope/metadata")
    assert resp.status_code == 404
    assert resp.json() == {"error": "Servable not found for request: Latest(nope)"}


# ---- predict


def test_predict_row_format(hpt):
    resp = hpt.post("/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_predict_row_format_with_rank_two_instances(hpt):
    resp = hpt.post("/v1/models/default:predict", {"instances": [[1.0], [2.0]]})
    assert resp.json() == {"predictions": [[2.5], [3.0]]}


def test_predict_named_instances(hpt):
    resp = hpt.post("/v1/models/default:predict", {"instances": [{"x": [1.0]}, {"x": [5.0]}]})
    assert resp.json() == {"predictions": [[2.5], [4.5]]}


def test_predict_columnar_format(hpt):
    resp = hpt.post("/v1/models/default:predict", {"inputs": [[1.0], [2.0], [5.0]]})
    assert resp.json() == {"outputs": [[2.5], [3.0], [4.5]]}


def test_predict_named_columnar_inputs(hpt):
    resp = hpt.post("/v1/models/default:predict", {"inputs": {"x": [[1.0]]}})
    assert resp.json() == {"outputs": [[2.5]]}


def test_integers_are_accepted_for_float_inputs(hpt):
    resp = hpt.post("/v1/models/default:predict", {"instances": [1, 2, 5]})
    assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_floats_are_written_with_shortest_round_trip_digits(hpt):
    resp = hpt.post("/v1/models/default:predict", {"instances": [0.1]})
    # 0.5 * float32(0.1) + 2 = 2.05 in float32; its shortest round-trip form.
    assert json.loads(resp.text)["predictions"] == [2.05]
    assert "2.05" in resp.text and "2.0500" not in resp.text


def test_predict_with_signature_name(hpt):
    body = {"signature_name": "regress_x2_to_y3", "instances": [[1.0], [3.0]]}
    resp = hpt.post("/v1/models/default:predict", body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [[3.5], [4.5]]}


def test_predict_by_version(hpt):
    resp = hpt.post("/v1/models/default/versions/123:predict", {"instances": [1.0]})
    assert resp.json() == {"predictions": [2.5]}


def test_predict_nan_and_infinity(hpt):
    resp = hpt.post("/v1/models/default:predict", b'{"instances": [NaN, Infinity, -Infinity]}')
    assert resp.status_code == 200, resp.text
    assert "NaN" in resp.text and "-Infinity" in resp.text
    values = json.loads(resp.text)["predictions"]  # Python's json reads NaN/Infinity
    assert values[0] != values[0] and values[1] == float("inf") and values[2] == float("-inf")


def test_predict_gzip_body(hpt):
    body = gzip.compress(json.dumps({"instances": [1.0, 2.0]}).encode())
    resp = hpt.post("/v1/models/default:predict", body, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [2.5, 3.0]}


def test_predict_string_input_with_b64(hpt):
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(2.0)
    encoded = base64.b64encode(example.SerializeToString()).decode()
    body = {"signature_name": "classify_x_to_y", "instances": [{"b64": encoded}]}
    resp = hpt.post("/v1/models/default:predict", body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [[3.0]]}


def test_half_plus_three(serve):
    server = serve("half_plus_three", HALF_PLUS_THREE)
    resp = server.post("/v1/models/half_plus_three:predict", {"instances": [1.0, 2.0, 5.0]})
    assert resp.json() == {"predictions": [3.5, 4.0, 5.5]}


def test_tf2_predict(tf2):
    resp = tf2.post("/v1/models/half_plus_two_tf2:predict", {"instances": [1.0, 2.0, 5.0]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [2.5, 3.0, 4.5]}


# ---- classify and regress


def test_classify(hpt):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    resp = hpt.post("/v1/models/default:classify", body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"results": [[["", 2.5]], [["", 3.0]]]}


def test_regress(hpt):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    resp = hpt.post("/v1/models/default:regress", body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"results": [2.5, 3.0]}


def test_regress_by_version(hpt):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 4.0}]}
    assert hpt.post("/v1/models/default/versions/123:regress", body).json() == {"results": [4.0]}


def test_regress_merges_context_into_examples(hpt):
    body = {
        "signature_name": "regress_x_to_y",
        "context": {"x": 4.0},
        "examples": [{}, {"x": 2.0}],
    }
    resp = hpt.post("/v1/models/default:regress", body)
    assert resp.status_code == 200, resp.text
    # The first example takes x from the context; the second overrides it.
    assert resp.json() == {"results": [4.0, 3.0]}


def test_regress_other_signature(hpt):
    # regress_x_to_y2 computes 0.5 * x + 3 from the same feature.
    body = {"signature_name": "regress_x_to_y2", "examples": [{"x": 1.0}]}
    resp = hpt.post("/v1/models/default:regress", body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"results": [3.5]}


def test_classify_default_signature_is_not_a_classifier(hpt):
    resp = hpt.post("/v1/models/default:classify", {"examples": [{"x": 1.0}]})
    assert resp.status_code == 400
    assert "No classification inputs found in SignatureDef" in resp.json()["error"]



def test_concurrent_requests_each_get_their_own_answer(hpt):
    from concurrent.futures import ThreadPoolExecutor

    def call(i):
        values = [float(i), float(i) + 0.5]
        resp = hpt.post("/v1/models/default:predict", {"instances": values})
        return resp.status_code, resp.json(), values

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(64)))
    for status, body, values in results:
        assert status == 200
        assert body == {"predictions": [0.5 * v + 2 for v in values]}


# ---- --rest_api_enable_cors_support


@pytest.fixture(scope="module")
def cors(serve):
    return serve("default", HALF_PLUS_TWO, "--rest_api_enable_cors_support")


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


def cors_headers(resp):
    return {name: resp.headers.get(name) for name in CORS_HEADERS}


def test_cors_preflight_is_answered(cors):
    # What a browser sends before a JSON POST from a page of another origin.
    resp = requests.options(
        cors.url("/v1/models/default:predict"),
        headers={
            "Origin": "http://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=30,
    )
    assert resp.status_code == 200
    assert cors_headers(resp) == CORS_HEADERS


def test_cors_headers_on_answers_and_errors(cors):
    resp = cors.post("/v1/models/default:predict", {"instances": [1.0]}, headers={"Origin": "http://example.com"})
    assert resp.json() == {"predictions": [2.5]}
    assert cors_headers(resp) == CORS_HEADERS
    missing = cors.get("/v1/models/nope")
    assert missing.status_code == 404
    assert cors_headers(missing) == CORS_HEADERS


def test_no_cors_headers_by_default(hpt):
    resp = hpt.post("/v1/models/default:predict", {"instances": [1.0]}, headers={"Origin": "http://example.com"})
    assert resp.ok
    assert "Access-Control-Allow-Origin" not in resp.headers
