"""Every dtype TF Serving's JSON supports, any rank, b64 in and out, several inputs and outputs."""

import base64
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import DTYPES_MODEL, HALF_PLUS_TWO
PREDICT = "/v1/models/dtypes:predict"


@pytest.fixture(scope="module")
def server(serve):
    return serve("dtypes", DTYPES_MODEL)


def predict(server, body):
    resp = server.post(PREDICT, body)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.parametrize(
    "dtype, values",
    [
        ("float32", [1.5, -2.25, 0.0, 3.0e38, 1e-10]),
        ("float64", [0.1, -1e300, 2.5]),
        ("int8", [-128, 0, 127]),
        ("int16", [-32768, 32767]),
        ("int32", [-2147483648, 2147483647]),
        ("int64", [-9223372036854775808, 9223372036854775807]),
        ("uint8", [0, 255]),
        ("uint16", [0, 65535]),
        ("uint32", [0, 4294967295]),
        ("uint64", [0, 18446744073709551615]),
        ("bool", [True, False]),
        ("string", ["hello", "h\u00e9llo w\u00f6rld", ""]),
        # TF Serving has no JSON form for these two; oxserve writes them as floats.
        ("float16", [1.5, -2.25, 0.0, 65504.0, 0.000244140625]),
        ("bfloat16", [1.5, -2.25, 0.0, 256.0, 0.0078125]),
    ],
)
def test_every_dtype_round_trips(server, dtype, values):
    body = {"signature_name": f"identity_{dtype}", "instances": values}
    assert predict(server, body) == {"predictions": values}
    columnar = {"signature_name": f"identity_{dtype}", "inputs": values}
    assert predict(server, columnar) == {"outputs": values}


@pytest.mark.parametrize(
    "dtype, value",
    [("int8", 128), ("uint8", -1), ("uint8", 256), ("int32", 2147483648), ("uint64", -1),
     ("int32", 1.5), ("bool", 1), ("string", 5), ("float32", "1.0")],
)
def test_out_of_range_and_wrong_type_values(server, dtype, value):
    resp = server.post(PREDICT, {"signature_name": f"identity_{dtype}", "instances": [value]})
    assert resp.status_code == 400, resp.text
    assert "error" in resp.json()


@pytest.mark.parametrize("dtype, numpy_dtype", [("float16", np.float16), ("bfloat16", tf.bfloat16.as_numpy_dtype)])
def test_half_and_bfloat16_round_to_nearest(server, dtype, numpy_dtype):
    # The last two lie just past a tie of float16 and of bfloat16: numpy rounds them up, once.
    values = [0.1, -1 / 3, 1e-3, 12.345, 1.000488281250001, 1.00390625000001]
    out = predict(server, {"signature_name": f"identity_{dtype}", "instances": values})["predictions"]
    expected = np.array(values).astype(numpy_dtype)
    np.testing.assert_array_equal(np.array(out).astype(numpy_dtype), expected)
    # Each value is written as a float (as TF Serving writes float32: it reads back exactly).
    assert np.array(out, dtype=np.float32).tolist() == expected.astype(np.float32).tolist()


NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
                "bfloat16": tf.bfloat16.as_numpy_dtype}


@pytest.mark.parametrize(
    "dtype, value, expected",
    [("float32", 1435774380, 1435774336.0),  # the example of TF Serving's REST guide
     ("float32", -18446744073709551615, -(2.0 ** 64)),
     ("float32", 1e39, math.inf),
     # rapidjson's normal-precision parse (TF Serving's) reads this one ulp above FLT_MAX.
     ("float32", 3.4028234663852886e38, 3.4028234663852886e38),
     ("float64", 9007199254740993, 9007199254740992.0),
     ("float16", 70000.0, math.inf), ("float16", 4097, 4096.0),
     ("bfloat16", -1e39, -math.inf), ("bfloat16", 257, 256.0)],
)
def test_numbers_a_float_type_cannot_hold_are_rounded_as_tf_serving_rounds_them(server, dtype, value, expected):
    # TF Serving takes any number for a float input (rapidjson's GetFloat()), as its REST guide's
    # "Floating Point Precision" says; half and bfloat16, which its JSON lacks, follow float.
    out = predict(server, {"signature_name": f"identity_{dtype}", "instances": [value]})["predictions"]
    numpy_dtype = NUMPY_DTYPES[dtype]
    assert np.array(out).astype(numpy_dtype).tolist() == np.array([expected]).astype(numpy_dtype).tolist()


def test_complex_tensors_have_no_json_form(server):
    # TF Serving's errors: converting a JSON value to complex is unimplemented, and a complex
    # output cannot be written.
    resp = server.post(PREDICT, {"signature_name": "identity_complex64", "instances": [1.0]})
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"error": "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: "
                                    "Conversion of JSON Value: 1.0 to type: complex64"}
    resp = server.post(PREDICT, {"signature_name": "to_complex", "instances": [1.0]})
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"error": "Failed to write JSON value for tensor type: complex64"}


def test_any_rank(server):
    matrix = [[1, 2, 3], [4, 5, 6]]
    assert predict(server, {"signature_name": "identity_int32", "instances": matrix}) == {
        "predictions": matrix
    }
    cube = [[[1.5, 2.5], [3.5, 4.5]], [[5.5, 6.5], [7.5, 8.5]]]
    assert predict(server, {"signature_name": "identity_float32", "inputs": cube}) == {
        "outputs": cube
    }
    assert predict(server, {"signature_name": "identity_int64", "inputs": 7}) == {"outputs": 7}


def test_b64_strings_in_and_bytes_outputs_out(server):
    raw = bytes(range(256))
    encoded = base64.b64encode(raw).decode()
    body = {"signature_name": "echo_bytes", "instances": [{"b64": encoded}, {"b64": ""}]}
    assert predict(server, body) == {"predictions": [{"b64": encoded}, {"b64": ""}]}
    body = {"signature_name": "echo_bytes", "inputs": {"x_bytes": [{"b64": encoded}]}}
    assert predict(server, body) == {"outputs": [{"b64": encoded}]}


def test_b64_into_a_plain_string_output(server):
    encoded = base64.b64encode(b"plain text").decode()
    body = {"signature_name": "identity_string", "instances": [{"b64": encoded}]}
    assert predict(server, body) == {"predictions": ["plain text"]}


def test_non_utf8_bytes_in_a_plain_string_output_stay_valid_json(server):
    encoded = base64.b64encode(b"\xff\xfe").decode()
    body = {"signature_name": "identity_string", "instances": [{"b64": encoded}]}
    assert predict(server, body) == {"predictions": [{"b64": encoded}]}


def test_several_inputs_and_outputs_row_format(server):
    body = {"signature_name": "add_sub", "instances": [{"a": 1.0, "b": 2.0}, {"a": 5.0, "b": 1.0}]}
    assert predict(server, body) == {
        "predictions": [{"diff": -1.0, "sum": 3.0}, {"diff": 4.0, "sum": 6.0}]
    }


def test_several_inputs_and_outputs_columnar_format(server):
    body = {"signature_name": "add_sub", "inputs": {"a": [1.0, 5.0], "b": [2.0, 1.0]}}
    assert predict(server, body) == {"outputs": {"diff": [-1.0, 4.0], "sum": [3.0, 6.0]}}


def test_missing_and_extra_named_inputs(server):
    for body in [
        {"signature_name": "add_sub", "inputs": {"a": [1.0]}},
        {"signature_name": "add_sub", "instances": [{"a": 1.0}]},
        {"signature_name": "add_sub", "instances": [{"a": 1.0, "b": 1.0, "c": 1.0}]},
        {"signature_name": "add_sub", "instances": [1.0, 2.0]},
    ]:
        resp = server.post(PREDICT, body)
        assert resp.status_code == 400, (body, resp.text)
    # TF Serving reads only the signature's names from a columnar "inputs" object.
    body = {"signature_name": "add_sub", "inputs": {"a": [1.0], "b": [1.0], "c": [9.0]}}
    assert predict(server, body) == {"outputs": {"diff": [0.0], "sum": [2.0]}}


def test_response_bytes_are_laid_out_as_tf_serving_writes_them(serve):
    server = serve("default", HALF_PLUS_TWO)
    resp = server.post("/v1/models/default:predict", {"instances": [1.0, 2.0, 5.0]})
    # rapidjson's PrettyWriter, single-line arrays switched on after the outer '['.
    assert resp.text == '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
    resp = server.post("/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]})
    assert resp.text == '{\n    "results": [2.5]\n}'
    status = server.get("/v1/models/default").text
    assert json.loads(status)["model_version_status"][0]["state"] == "AVAILABLE"
    # Errors too (MakeJsonFromStatus), with JSON's escapes.
    resp = server.post("/v1/models/default:predict", {"signature_name": "nope", "instances": [1.0]})
    assert resp.text == '{\n    "error": "Serving signature name: \\"nope\\" not found in signature def"\n}'


def test_a_prediction_with_no_rows_is_an_empty_list(serve, tmp_path):
    # A detector that finds nothing (TF Serving's issue #1610): [] rather than an error.
    class Positives(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"y": tf.boolean_mask(x, x > 0)}

    module = Positives()
    tf.saved_model.save(module, str(tmp_path / "positives" / "1"), signatures={"serving_default": module.serve})
    server = serve("positives", tmp_path / "positives")
    assert predict_at(server, "positives", {"instances": [1.0, -1.0, 2.0]}) == {"predictions": [1.0, 2.0]}
    resp = server.post("/v1/models/positives:predict", {"instances": [-1.0]})
    assert resp.status_code == 200, resp.text
    assert resp.text == '{\n    "predictions": []\n}'
    assert predict_at(server, "positives", {"inputs": [-1.0]}) == {"outputs": []}


def predict_at(server, model, body):
    resp = server.post(f"/v1/models/{model}:predict", body)
    assert resp.status_code == 200, resp.text
    return resp.json()
