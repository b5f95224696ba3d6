"""TF Serving's gRPC API, through the official `tensorflow-serving-api` client: PredictionService,
ModelService, health and reflection, on TF Serving's test models and the demo models, with TF
Serving's status codes and messages for bad requests."""

import base64
import os
import pathlib
import socket
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from conftest import (
    DEMO,
    DTYPES_MODEL,
    HALF_PLUS_TWO,
    HALF_PLUS_TWO_TF2,
    TWO_VERSIONS,
    expected_outputs,
    load_golden,
    running,
    tf2_metadata_golden,
)

NAME = "half_plus_two"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
TIMEOUT = 60
TOLERANCE = 1e-5
OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


class Client:
    """Stubs of both TF Serving services on one channel."""

    def __init__(self, target, **kwargs):
        self.channel = grpc.insecure_channel(target, options=OPTIONS, **kwargs)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, request):
        return self.predictions.Predict(request, timeout=TIMEOUT)

    def close(self):
        self.channel.close()


@pytest.fixture(scope="module")
def hpt(serve):
    return serve(NAME, HALF_PLUS_TWO)


@pytest.fixture(scope="module")
def client(hpt):
    client = Client(f"127.0.0.1:{hpt.grpc_port}")
    yield client
    client.close()


def rpc_error(method, request, **kwargs):
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=TIMEOUT, **kwargs)
    return info.value.code(), info.value.details()


def predict_request(inputs, name=NAME, signature_name="", output_filter=(), version=None, label=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, tensor in inputs.items():
        request.inputs[alias].CopyFrom(tensor)
    request.output_filter.extend(output_filter)
    return request


def floats(values, shape=None):
    return tf.make_tensor_proto(np.asarray(values, dtype=np.float32), shape=shape)


def raw_tensor(dtype, dims, **fields):
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
    )
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **fields)


def values(tensor):
    return tf.make_ndarray(tensor)


def example(**features):
    return example_pb2.Example(
        features=feature_pb2.Features(
            feature={
                key: feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[value]))
                for key, value in features.items()
            }
        )
    )


def spec_of(response):
    spec = response.model_spec
    return spec.name, spec.signature_name, spec.version.value if spec.HasField("version") else None


# ---- ModelService.GetModelStatus


def status_request(name=NAME, version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def test_model_status(client):
    response = client.models.GetModelStatus(status_request(), timeout=TIMEOUT)
    assert len(response.model_version_status) == 1
    status = response.model_version_status[0]
    assert status.version == 123
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0
    assert status.status.error_message == ""


def test_model_status_of_one_version(client):
    response = client.models.GetModelStatus(status_request(version=123), timeout=TIMEOUT)
    assert [s.version for s in response.model_version_status] == [123]


def test_model_status_errors(client):
    assert rpc_error(client.models.GetModelStatus, status_request(version=7)) == (
        NOT_FOUND,
        f"Could not find version 7 of model {NAME}",
    )
    assert rpc_error(client.models.GetModelStatus, status_request(name="nope")) == (
        NOT_FOUND,
        "Could not find any versions of model nope",
    )
    assert rpc_error(client.models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()) == (
        INVALID_ARGUMENT,
        "Missing ModelSpec",
    )


# ---- PredictionService.GetModelMetadata


def metadata_request(name=NAME, fields=("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = name
    request.metadata_field.extend(fields)
    return request


def signature_map_of(response):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    return signature_map


def as_tf_serving_json(message):
    """The JSON TF Serving's REST API prints for a message (its golden files use this layout)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def test_metadata_matches_tf_serving_golden(client):
    response = client.predictions.GetModelMetadata(metadata_request(), timeout=TIMEOUT)
    assert spec_of(response) == (NAME, "", 123)
    assert list(response.metadata) == ["signature_def"]
    any_value = response.metadata["signature_def"]
    assert any_value.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    golden = load_golden("half_plus_two_model_metadata.json")["metadata"]["signature_def"]
    assert as_tf_serving_json(signature_map_of(response)) == golden


def test_metadata_signature_details(client):
    response = client.predictions.GetModelMetadata(metadata_request(), timeout=TIMEOUT)
    signatures = signature_map_of(response).signature_def
    assert set(signatures) >= {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"}
    default = signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].name == "x:0"
    assert default.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in default.inputs["x"].tensor_shape.dim] == [-1, 1]
    assert default.outputs["y"].name == "y:0"
    assert signatures["classify_x_to_y"].inputs["inputs"].tensor_shape.unknown_rank


def test_metadata_errors(client):
    method = client.predictions.GetModelMetadata
    assert rpc_error(method, metadata_request(fields=())) == (
        INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    # TF Serving builds this message with StrCat: the "%s" stays, the field name follows.
    assert rpc_error(method, metadata_request(fields=("signature_def", "foo"))) == (
        INVALID_ARGUMENT,
        "Metadata field %s is not supportedfoo",
    )
    # The request is checked before the model is looked up, as in TF Serving.
    assert rpc_error(method, metadata_request(name="nope", fields=())) == (
        INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field",
    )
    assert rpc_error(method, metadata_request(name="nope")) == (
        NOT_FOUND,
        "Servable not found for request: Latest(nope)",
    )
    missing = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert rpc_error(method, missing) == (INVALID_ARGUMENT, "Missing ModelSpec")
    assert rpc_error(method, metadata_request(name="")) == (
        INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )


# ---- PredictionService.Predict


def test_predict_unfiltered(client):
    response = client.predict(predict_request({"x": floats([[1.0], [2.0], [5.0]])}))
    assert spec_of(response) == (NAME, "serving_default", 123)
    assert list(response.outputs) == ["y"]
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in y.tensor_shape.dim] == [3, 1]
    # Typed fields by default, as TF Serving's AsProtoField.
    assert list(y.float_val) == [2.5, 3.0, 4.5]
    assert y.tensor_content == b""


def test_predict_filtered(client):
    response = client.predict(predict_request({"x": floats([[4.0]])}, output_filter=["y"]))
    assert list(response.outputs) == ["y"]
    assert values(response.outputs["y"]).tolist() == [[4.0]]


def test_predict_batch(client):
    x = np.random.default_rng(7).uniform(-100, 100, size=(1000, 1)).astype(np.float32)
    response = client.predict(predict_request({"x": floats(x)}))
    np.testing.assert_allclose(values(response.outputs["y"]), 0.5 * x + 2, rtol=1e-6)


def test_predict_with_tensor_content_and_typed_inputs(client):
    content = floats([[1.0], [2.0]])
    assert content.tensor_content and not content.float_val
    typed = raw_tensor(types_pb2.DT_FLOAT, [2, 1], float_val=[1.0, 2.0])
    for tensor in (content, typed):
        response = client.predict(predict_request({"x": tensor}))
        assert values(response.outputs["y"]).tolist() == [[2.5], [3.0]]


def test_predict_one_value_fills_the_shape(client):
    tensor = raw_tensor(types_pb2.DT_FLOAT, [3, 1], float_val=[4.0])
    response = client.predict(predict_request({"x": tensor}))
    assert values(response.outputs["y"]).tolist() == [[4.0], [4.0], [4.0]]


def test_predict_non_default_signature(client):
    request = predict_request({"inputs": floats([[1.0], [3.0]])}, signature_name="regress_x2_to_y3")
    response = client.predict(request)
    assert spec_of(response) == (NAME, "regress_x2_to_y3", 123)
    assert values(response.outputs["outputs"]).tolist() == [[3.5], [4.5]]


def test_predict_by_version(client):
    response = client.predict(predict_request({"x": floats([[2.0]])}, version=123))
    assert spec_of(response) == (NAME, "serving_default", 123)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_predict_over_compressed_channel(hpt, compression):
    client = Client(f"127.0.0.1:{hpt.grpc_port}", compression=compression)
    try:
        response = client.predict(predict_request({"x": floats([[2.0]] * 1000)}))
        assert values(response.outputs["y"]).tolist() == [[3.0]] * 1000
    finally:
        client.close()


def test_predict_with_a_generous_deadline(client):
    request = predict_request({"x": floats([[2.0]])})
    response = client.predictions.Predict(request, timeout=30)
    assert values(response.outputs["y"]).tolist() == [[3.0]]


# ---- Classify, Regress, MultiInference


def test_classify(client):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.extend([example(x=2.0), example(x=1.0)])
    response = client.predictions.Classify(request, timeout=TIMEOUT)
    assert spec_of(response) == (NAME, "classify_x_to_y", 123)
    classes = [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]
    assert classes == [[("", 3.0)], [("", 2.5)]]


def regression_request(signature_name, examples, context=None, name=NAME):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature_name
    if context is None:
        request.input.example_list.examples.extend(examples)
    else:
        request.input.example_list_with_context.examples.extend(examples)
        request.input.example_list_with_context.context.CopyFrom(context)
    return request


def regressions(response):
    return [r.value for r in response.result.regressions]


def test_regress(client):
    response = client.predictions.Regress(
        regression_request("regress_x_to_y", [example(x=2.0), example(x=1.0)]), timeout=TIMEOUT
    )
    assert spec_of(response) == (NAME, "regress_x_to_y", 123)
    assert regressions(response) == [3.0, 2.5]


def test_regress_with_context(client):
    # The first example takes x from the context; the second overrides it.
    request = regression_request("regress_x_to_y", [example(), example(x=2.0)], context=example(x=4.0))
    assert regressions(client.predictions.Regress(request, timeout=TIMEOUT)) == [4.0, 3.0]
    request = regression_request("regress_x_to_y2", [example(x=1.0)], context=example(x=9.0))
    assert regressions(client.predictions.Regress(request, timeout=TIMEOUT)) == [3.5]


def multi_request(tasks, examples, name=NAME):
    request = inference_pb2.MultiInferenceRequest()
    for signature_name, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = signature_name
        task.method_name = method
    request.input.example_list.examples.extend(examples)
    return request


def test_multi_inference(client):
    request = multi_request(
        [("classify_x_to_y", CLASSIFY), ("regress_x_to_y2", REGRESS)], [example(x=1.0), example(x=2.0)]
    )
    response = client.predictions.MultiInference(request, timeout=TIMEOUT)
    assert len(response.results) == 2
    classify, regress = response.results
    assert spec_of(classify) == (NAME, "classify_x_to_y", 123)
    assert [[c.score for c in row.classes] for row in classify.classification_result.classifications] == [
        [2.5],
        [3.0],
    ]
    assert spec_of(regress) == (NAME, "regress_x_to_y2", 123)
    assert [r.value for r in regress.regression_result.regressions] == [3.5, 4.0]


def test_multi_inference_errors(client):
    method = client.predictions.MultiInference
    examples = [example(x=1.0)]
    assert rpc_error(method, multi_request([("regress_x_to_y", REGRESS)] * 2, examples)) == (
        INVALID_ARGUMENT,
        "Duplicate evaluation of signature: regress_x_to_y",
    )
    assert rpc_error(method, multi_request([("serving_default", "tensorflow/serving/predict")], examples)) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "Unsupported signature method_name: tensorflow/serving/predict",
    )
    assert rpc_error(
        method, multi_request([("regress_x_to_y", REGRESS), ("regress_x2_to_y3", REGRESS)], examples)
    ) == (INVALID_ARGUMENT, "Input tensor must be the same for all Signatures.")
    assert rpc_error(method, multi_request([("nope", REGRESS)], examples)) == (
        INVALID_ARGUMENT,
        "Requested signature not found in model graph: nope",
    )
    # Every task is checked before anything runs, as in TF Serving: the second task's signature
    # is reported, not the first task's empty input.
    code, message = rpc_error(method, multi_request([("regress_x_to_y", REGRESS), ("serving_default", CLASSIFY)], []))
    assert code == INVALID_ARGUMENT and message.startswith("No classification inputs found in SignatureDef"), message
    mixed = multi_request([("regress_x_to_y", REGRESS)], examples)
    other = mixed.tasks.add()
    other.model_spec.name, other.model_spec.signature_name, other.method_name = "other", "classify_x_to_y", CLASSIFY
    assert rpc_error(method, mixed) == (
        INVALID_ARGUMENT,
        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    )
    assert rpc_error(method, multi_request([], examples)) == (
        INVALID_ARGUMENT,
        "ModelSpec has no name specified.",
    )
    assert rpc_error(method, multi_request([("regress_x_to_y", REGRESS)], [])) == (
        INVALID_ARGUMENT,
        "Input is empty.",
    )


def test_classify_and_regress_errors(client):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.input.example_list.examples.extend([example(x=1.0)])
    code, message = rpc_error(client.predictions.Classify, request)
    assert code == INVALID_ARGUMENT
    assert message.startswith("No classification inputs found in SignatureDef")
    request.model_spec.signature_name = "nope"
    assert rpc_error(client.predictions.Classify, request) == (
        INVALID_ARGUMENT,
        "No signature was found with the name: nope",
    )
    assert rpc_error(client.predictions.Regress, regression_request("regress_x_to_y", [])) == (
        INVALID_ARGUMENT,
        "Input is empty.",
    )
    code, message = rpc_error(client.predictions.Regress, regression_request("regress_x_to_y", [example(y=1.0)]))
    assert code == INVALID_ARGUMENT
    assert "Feature: x (data type: float) is required but could not be found." in message
    assert rpc_error(client.predictions.Regress, regression_pb2.RegressionRequest()) == (
        INVALID_ARGUMENT,
        "Missing ModelSpec",
    )
    assert rpc_error(client.predictions.Classify, classification_pb2.ClassificationRequest()) == (
        INVALID_ARGUMENT,
        "Missing ModelSpec",
    )


# ---- Predict errors: TF Serving's codes and messages


def x_float(value=1.0):
    return {"x": floats([[value]])}


PREDICT_ERRORS = [
    ("unknown model", predict_request(x_float(), name="nope"), NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", predict_request(x_float(), version=7), NOT_FOUND,
     f"Servable not found for request: Specific({NAME}, 7)"),
    ("unknown label", predict_request(x_float(), label="stable"), INVALID_ARGUMENT,
     "Unrecognized servable version label: stable"),
    ("unknown signature", predict_request(x_float(), signature_name="nope"),
     grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
    ("missing model spec", predict_pb2.PredictRequest(), INVALID_ARGUMENT, "Missing ModelSpec"),
    ("model without name", predict_request(x_float(), name=""), INVALID_ARGUMENT,
     "ModelSpec has no name specified."),
    ("missing input", predict_request({}), INVALID_ARGUMENT,
     "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
     "Missing but required: {x}."),
    ("extra input", predict_request({**x_float(), "z": floats([[1.0]])}), INVALID_ARGUMENT,
     "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. "
     "Missing but required: {}."),
    ("misnamed input", predict_request({"z": floats([[1.0]])}), INVALID_ARGUMENT,
     "Signature input alias: x(feed name: x:0) not found in request and no default value "
     "provided. Inputs expected to be in the request {z}, or default input alias set: "),
    ("unknown output alias", predict_request(x_float(), output_filter=["nope"]), INVALID_ARGUMENT,
     "output tensor alias not found in signature: nope Outputs expected to be in the set {y}."),
    ("duplicate output alias", predict_request(x_float(), output_filter=["y", "y"]),
     INVALID_ARGUMENT, "duplicate output tensor alias: y"),
    ("wrong dtype", predict_request({"x": tf.make_tensor_proto([[1]], dtype=tf.int32)}),
     INVALID_ARGUMENT, "Expects arg[0] to be float but int32 is provided"),
]


@pytest.mark.parametrize("case, request_, code, message", PREDICT_ERRORS, ids=[c[0] for c in PREDICT_ERRORS])
def test_predict_errors(client, case, request_, code, message):
    assert rpc_error(client.predictions.Predict, request_) == (code, message)


HUGE = 1 << 40
BAD_TENSORS = [
    ("fewer values than the shape", raw_tensor(types_pb2.DT_FLOAT, [2, 2], float_val=[1, 2, 3]),
     INVALID_ARGUMENT,
     "tensor parsing error: x (shape [2,2] has 4 elements, but float_val has 3 values (give 4, or 1 "
     "to fill the shape))"),
    ("more values than the shape", raw_tensor(types_pb2.DT_FLOAT, [1, 1], float_val=[1, 2]),
     INVALID_ARGUMENT, "tensor parsing error: x (shape [1,1] has 1 elements"),
    ("no values", raw_tensor(types_pb2.DT_FLOAT, [2, 1]), INVALID_ARGUMENT,
     "tensor parsing error: x (shape [2,1] has 2 elements, but neither float_val nor "
     "tensor_content holds any value)"),
    ("huge shape without data", raw_tensor(types_pb2.DT_FLOAT, [HUGE, 1]), INVALID_ARGUMENT,
     f"tensor parsing error: x (shape [{HUGE},1] has {HUGE} elements, but neither"),
    ("huge shape from one value", raw_tensor(types_pb2.DT_FLOAT, [HUGE, 1], float_val=[1]),
     INVALID_ARGUMENT, "tensor parsing error: x (filling shape"),
    ("huge shape with short content", raw_tensor(types_pb2.DT_FLOAT, [HUGE, 1], tensor_content=b"\0" * 8),
     INVALID_ARGUMENT, "tensor parsing error: x (tensor_content has 8 bytes"),
    ("overflowing shape", raw_tensor(types_pb2.DT_FLOAT, [1 << 62, 1 << 62]), INVALID_ARGUMENT,
     "tensor parsing error: x (tensor_shape"),
    ("negative dimension", raw_tensor(types_pb2.DT_FLOAT, [-1, 1], float_val=[1]), INVALID_ARGUMENT,
     "tensor parsing error: x (tensor_shape [-1,1] has a negative dimension (-1))"),
    ("unknown dtype", raw_tensor(999, [1, 1], float_val=[1]), INVALID_ARGUMENT,
     "tensor parsing error: x (dtype 999"),
    ("DT_INVALID", raw_tensor(types_pb2.DT_INVALID, [1, 1], float_val=[1]), INVALID_ARGUMENT,
     "tensor parsing error: x (dtype is DT_INVALID"),
    ("tensor_content length", raw_tensor(types_pb2.DT_FLOAT, [2, 1], tensor_content=b"\0" * 7),
     INVALID_ARGUMENT,
     "tensor parsing error: x (tensor_content has 7 bytes, but shape [2,1] of float needs 2 x 4 = 8)"),
    ("values in the wrong field", raw_tensor(types_pb2.DT_FLOAT, [1, 1], int_val=[1]), INVALID_ARGUMENT,
     "tensor parsing error: x (float tensors take their values from float_val"),
    ("unsupported dtype", raw_tensor(types_pb2.DT_QINT8, [1, 1], int_val=[1]),
     grpc.StatusCode.UNIMPLEMENTED, "tensor parsing error: x (tensors of type DT_QINT8"),
    ("complex values not in pairs", raw_tensor(types_pb2.DT_COMPLEX64, [1, 1], scomplex_val=[1, 2, 3]),
     INVALID_ARGUMENT, "tensor parsing error: x (complex values come in (real, imaginary) pairs, but 3"),
]


@pytest.mark.parametrize("case, tensor, code, message", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensors(client, case, tensor, code, message):
    got_code, got_message = rpc_error(client.predictions.Predict, predict_request({"x": tensor}))
    assert got_code == code
    assert got_message.startswith(message), got_message


def raw_method(client, path):
    """A method of the server called with raw bytes for a request (and answering raw bytes)."""
    return client.channel.unary_unary(path, request_serializer=None, response_deserializer=None)


# Bytes no parser reads as these requests: a length past the end, a field number 0, a wire type
# that does not exist, a nested message cut short, a string that is not UTF-8.
BROKEN_PROTOBUF = [
    ("/tensorflow.serving.PredictionService/Predict", b"\x0a\x05ab", "PredictRequest.model_spec"),
    ("/tensorflow.serving.PredictionService/Predict", predict_request({"x": floats([1.0])}).SerializeToString()[:-3], "PredictRequest.inputs"),
    ("/tensorflow.serving.PredictionService/Classify", b"\x00\x01", "invalid tag value: 0"),
    ("/tensorflow.serving.PredictionService/Regress", b"\x0f", "invalid wire type value: 7"),
    ("/tensorflow.serving.PredictionService/MultiInference", b"\x0a\x03\x0a\x05x", "MultiInferenceRequest.tasks"),
    ("/tensorflow.serving.PredictionService/GetModelMetadata", b"\x0a\x03\x0a\x01\xff", "not UTF-8"),
    ("/tensorflow.serving.ModelService/GetModelStatus", b"\x0a\x7f", "GetModelStatusRequest.model_spec"),
    ("/tensorflow.serving.ModelService/HandleReloadConfigRequest", b"\x0a\x02\x0a", "ReloadConfigRequest.config"),
]


@pytest.mark.parametrize("path, body, where", BROKEN_PROTOBUF, ids=[f"{p.rsplit('/')[-1]}-{w}" for p, _, w in BROKEN_PROTOBUF])
def test_broken_protobuf_is_the_clients_error(client, path, body, where):
    # TF Serving's gRPC core answers INTERNAL with an empty message; a request that does not parse
    # is the client's fault, so INVALID_ARGUMENT, saying where the bytes went wrong.
    code, message = rpc_error(raw_method(client, path), body)
    assert code == INVALID_ARGUMENT, (code, message)
    assert message.startswith("failed to decode Protobuf message"), message
    assert where in message, message


@pytest.fixture(scope="module")
def dtypes_client(serve):
    client = Client(f"127.0.0.1:{serve('dtypes', DTYPES_MODEL).grpc_port}")
    yield client
    client.close()


BFLOAT16 = tf.bfloat16.as_numpy_dtype
NARROW_AND_COMPLEX = [
    ("float16", np.array([[0.0, 1.5], [-2.25, 0.1], [65504.0, 6e-8]], dtype=np.float16)),
    ("bfloat16", np.array([[0.0, 1.5], [-2.25, 0.1], [3e38, 1e-38]], dtype=BFLOAT16)),
    ("complex64", np.array([[0, 1j], [1.5 - 2j, 3e38 + 0.1j], [-1, 2]], dtype=np.complex64)),
    ("complex128", np.array([[0, 1j], [1.5 - 2j, 1e300 + 0.1j], [-1, 2]], dtype=np.complex128)),
]


@pytest.mark.parametrize("dtype, array", NARROW_AND_COMPLEX, ids=[c[0] for c in NARROW_AND_COMPLEX])
def test_half_bfloat16_and_complex_tensors(dtypes_client, dtype, array):
    # As tensor_content (what make_tensor_proto writes for these arrays) and as the typed field
    # (half_val holds each value's bits, the complex fields alternate real and imaginary parts).
    field, view = {
        "float16": ("half_val", np.uint16),
        "bfloat16": ("half_val", np.uint16),
        "complex64": ("scomplex_val", np.float32),
        "complex128": ("dcomplex_val", np.float64),
    }[dtype]
    typed = raw_tensor(tf.as_dtype(dtype).as_datatype_enum, array.shape, **{field: array.view(view).ravel().tolist()})
    for tensor in (tf.make_tensor_proto(array), typed):
        response = dtypes_client.predictions.Predict(
            predict_request({"x": tensor}, name="dtypes", signature_name=f"identity_{dtype}"), timeout=TIMEOUT)
        out = values(response.outputs["y"])
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def test_half_and_complex_outputs_of_float_inputs(dtypes_client):
    x = np.array([1.5, 0.1, -3.0], dtype=np.float32)
    response = dtypes_client.predictions.Predict(
        predict_request({"x": floats(x)}, name="dtypes", signature_name="to_half"), timeout=TIMEOUT)
    np.testing.assert_array_equal(values(response.outputs["y"]), x.astype(np.float16))
    response = dtypes_client.predictions.Predict(
        predict_request({"x": floats(x)}, name="dtypes", signature_name="to_complex"), timeout=TIMEOUT)
    np.testing.assert_array_equal(values(response.outputs["y"]), (x - 1j * x).astype(np.complex64))


def test_server_still_answers_after_bad_requests(hpt, client):
    assert hpt.alive()
    response = client.predict(predict_request({"x": floats([[10.0]])}))
    assert values(response.outputs["y"]).tolist() == [[7.0]]


# ---- versions


def test_versions_and_labels(serve):
    server = serve("two_versions", TWO_VERSIONS)
    client = Client(f"127.0.0.1:{server.grpc_port}")
    try:
        latest = client.predict(predict_request({"x": floats([[1.0]])}, name="two_versions"))
        assert spec_of(latest) == ("two_versions", "serving_default", 124)
        pinned = client.predict(predict_request({"x": floats([[1.0]])}, name="two_versions", version=124))
        assert spec_of(pinned)[2] == 124
        assert rpc_error(
            client.predictions.Predict, predict_request(x_float(), name="two_versions", version=123)
        ) == (NOT_FOUND, "Servable not found for request: Specific(two_versions, 123)")
    finally:
        client.close()


# ---- TF2 model


@pytest.fixture(scope="module")
def tf2(serve):
    server = serve("half_plus_two_tf2", HALF_PLUS_TWO_TF2)
    client = Client(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def test_tf2_predict(tf2):
    response = tf2.predict(predict_request({"x": floats([1.0, 2.0, 5.0])}, name="half_plus_two_tf2"))
    assert spec_of(response) == ("half_plus_two_tf2", "serving_default", 123)
    assert values(response.outputs["y"]).tolist() == [2.5, 3.0, 4.5]


def test_tf2_predict_fills_left_out_inputs_with_the_signature_defaults(tf2):
    # The TF2 export's serving_default has `defaults {x: [0.0]}`: TF Serving feeds it for a
    # request without x (VerifyRequestInputsSize, then GetInputValues).
    response = tf2.predict(predict_request({}, name="half_plus_two_tf2"))
    assert values(response.outputs["y"]).tolist() == [2.0]
    # A name the signature does not have is still refused, after the defaults are taken.
    code, message = rpc_error(tf2.predictions.Predict, predict_request({"z": floats([1.0])}, name="half_plus_two_tf2"))
    assert (code, message) == (INVALID_ARGUMENT, "Inputs contains invalid name. Used request inputs: , request input: z")


def test_tf2_regress_and_classify(tf2):
    request = regression_request("regress_x_to_y", [example(x=2.0)], name="half_plus_two_tf2")
    assert regressions(tf2.predictions.Regress(request, timeout=TIMEOUT)) == [3.0]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two_tf2"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.extend([example(x=2.0)])
    response = tf2.predictions.Classify(request, timeout=TIMEOUT)
    assert [[c.score for c in row.classes] for row in response.result.classifications] == [[3.0]]


def test_tf2_metadata_matches_golden(tf2):
    response = tf2.predictions.GetModelMetadata(metadata_request(name="half_plus_two_tf2"), timeout=TIMEOUT)
    assert spec_of(response) == ("half_plus_two_tf2", "", 123)
    golden = tf2_metadata_golden()["metadata"]["signature_def"]
    assert as_tf_serving_json(signature_map_of(response)) == golden


# ---- Unix socket, health, reflection, tensor_content output


def fields(buf):
    """Decodes a protobuf message into (field number, value) pairs: ints and bytes only."""
    out, i = [], 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            length, i = varint(buf, i)
            value, i = buf[i : i + length], i + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


def varint(buf, i):
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def length_delimited(number, payload):
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3


def health_check(channel, service):
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    response = check(length_delimited(1, service.encode()), timeout=TIMEOUT)
    return dict(fields(response)).get(1, 0)


@pytest.fixture(scope="module")
def extras(serve, tmp_path_factory):
    """A server with the optional gRPC features on: Unix socket, health service, tensor_content
    output, channel arguments and a small --grpc_max_threads."""
    socket_path = tmp_path_factory.mktemp("grpc") / "oxserve.sock"
    server = serve(
        NAME,
        HALF_PLUS_TWO,
        f"--grpc_socket_path={socket_path}",
        "--enable_grpc_healthcheck_service",
        "--enable_serialization_as_tensor_content=true",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=600000,grpc.keepalive_time_ms=60000,"
        "grpc.http2.min_ping_interval_without_data_ms=5000",
        "--grpc_max_threads=2",
    )
    server.socket_path = socket_path
    return server


def test_unix_socket(extras):
    assert extras.socket_path.exists()
    client = Client(f"unix:{extras.socket_path}")
    try:
        response = client.predict(predict_request({"x": floats([[1.0], [2.0]])}))
        assert values(response.outputs["y"]).tolist() == [[2.5], [3.0]]
        status = client.models.GetModelStatus(status_request(), timeout=TIMEOUT)
        assert status.model_version_status[0].version == 123
    finally:
        client.close()


def test_tensor_content_output(extras):
    client = Client(f"127.0.0.1:{extras.grpc_port}")
    try:
        response = client.predict(predict_request({"x": floats([[1.0], [2.0], [5.0]])}))
        y = response.outputs["y"]
        assert not y.float_val
        assert y.tensor_content == np.array([2.5, 3.0, 4.5], dtype="<f4").tobytes()
        assert values(y).tolist() == [[2.5], [3.0], [4.5]]
    finally:
        client.close()


def test_channel_arguments_are_applied_or_logged(extras):
    assert "grpc.http2.min_ping_interval_without_data_ms=5000" in extras.log()


def test_connections_that_do_not_finish_the_handshake_are_closed(serve):
    """As gRPC's C core (grpc.server_handshake_timeout_ms, 120 s by default): a connection that
    sends nothing, part of HTTP/2's preface, or the preface without its SETTINGS is closed, so that
    such clients cannot use up the server's file descriptors. One that shook hands stays."""
    server = serve(NAME, HALF_PLUS_TWO, "--grpc_channel_arguments=grpc.server_handshake_timeout_ms=1500")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    silent, partial, no_settings = (socket.create_connection(("127.0.0.1", server.grpc_port), timeout=60)
                                    for _ in range(3))
    partial.sendall(preface[:10])
    no_settings.sendall(preface)
    client = Client(f"127.0.0.1:{server.grpc_port}")
    try:
        assert client.predict(predict_request({"x": floats([[1.0]])})).outputs["y"].float_val == [2.5]
        for connection in (silent, partial, no_settings):
            while connection.recv(65536):  # the server's SETTINGS, if any, then the end
                pass
            connection.close()
        time.sleep(2)
        assert client.predict(predict_request({"x": floats([[1.0]])})).outputs["y"].float_val == [2.5]
    finally:
        client.close()


def test_channel_arguments_set_the_message_size_limits(serve):
    server = serve(NAME, HALF_PLUS_TWO,
                   "--grpc_channel_arguments=grpc.max_receive_message_length=4096,grpc.max_send_message_length=1024")
    client = Client(f"127.0.0.1:{server.grpc_port}")
    try:
        small = client.predict(predict_request({"x": floats(np.ones((10, 1)))}))
        assert values(small.outputs["y"]).tolist() == [[2.5]] * 10
        # 2000 floats in (8 kB); 500 floats in (2 kB, under 4096) but 2 kB out (over 1024). The
        # code is tonic's: gRPC's C core says RESOURCE_EXHAUSTED.
        assert rpc_error(client.predictions.Predict, predict_request({"x": floats(np.ones((2000, 1)))})) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "Error, decoded message length too large: found 8042 bytes, the limit is: 4096 bytes")
        assert rpc_error(client.predictions.Predict, predict_request({"x": floats(np.ones((500, 1)))})) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "Error, encoded message length too large: found 2063 bytes, the limit is: 1024 bytes")
    finally:
        client.close()
    # Gzipped, the 8 kB of ones take a few dozen bytes, and the limit applies to them inflated.
    client = Client(f"127.0.0.1:{server.grpc_port}", compression=grpc.Compression.Gzip)
    try:
        assert rpc_error(client.predictions.Predict, predict_request({"x": floats(np.ones((2000, 1)))})) == (
            grpc.StatusCode.OUT_OF_RANGE,
            "Error, decompressed message length too large: over 4096 bytes, the limit")
        small = client.predict(predict_request({"x": floats(np.ones((10, 1)))}))
        assert values(small.outputs["y"]).tolist() == [[2.5]] * 10
    finally:
        client.close()


def test_concurrent_calls_beyond_grpc_max_threads(extras):
    client = Client(f"127.0.0.1:{extras.grpc_port}")
    try:
        futures = [
            client.predictions.Predict.future(predict_request({"x": floats([[float(i)]])}), timeout=TIMEOUT)
            for i in range(16)
        ]
        results = [values(f.result().outputs["y"]).tolist() for f in futures]
        assert results == [[[0.5 * i + 2]] for i in range(16)]
    finally:
        client.close()


def test_health_service(extras):
    channel = grpc.insecure_channel(f"127.0.0.1:{extras.grpc_port}")
    try:
        assert health_check(channel, "") == SERVING
        assert health_check(channel, NAME) == SERVING
        assert health_check(channel, "tensorflow.serving.PredictionService") == SERVING
        assert health_check(channel, "tensorflow.serving.ModelService") == SERVING
        with pytest.raises(grpc.RpcError) as info:
            health_check(channel, "nope")
        assert info.value.code() == NOT_FOUND
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
        stream = watch(length_delimited(1, NAME.encode()), timeout=TIMEOUT)
        assert dict(fields(next(stream))).get(1) == SERVING
        stream.cancel()
        unknown = watch(length_delimited(1, b"nope"), timeout=TIMEOUT)
        assert dict(fields(next(unknown))).get(1) == SERVICE_UNKNOWN
        unknown.cancel()
    finally:
        channel.close()


def test_health_service_is_off_by_default(hpt):
    channel = grpc.insecure_channel(f"127.0.0.1:{hpt.grpc_port}")
    try:
        with pytest.raises(grpc.RpcError) as info:
            health_check(channel, "")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()


def listed_services(target, method="/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"):
    channel = grpc.insecure_channel(target)
    try:
        info = channel.stream_stream(method)
        # ServerReflectionRequest { list_services: "" } (field 7).
        responses = list(info(iter([length_delimited(7, b"")]), timeout=TIMEOUT))
        assert len(responses) == 1
        listing = dict(fields(responses[0]))[6]  # list_services_response
        return sorted(dict(fields(service))[1].decode() for _, service in fields(listing))
    finally:
        channel.close()


def test_server_reflection(hpt, extras):
    services = listed_services(f"127.0.0.1:{hpt.grpc_port}")
    assert "tensorflow.serving.PredictionService" in services
    assert "tensorflow.serving.ModelService" in services
    assert "grpc.health.v1.Health" not in services
    assert "grpc.reflection.v1.ServerReflection" in services
    alpha = listed_services(
        f"127.0.0.1:{hpt.grpc_port}", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    )
    assert [s for s in alpha if not s.startswith("grpc.reflection")] == [
        s for s in services if not s.startswith("grpc.reflection")
    ]
    assert "grpc.health.v1.Health" in listed_services(f"127.0.0.1:{extras.grpc_port}")


def test_socket_file_is_removed_at_shutdown(tmp_path):
    socket_path = tmp_path / "short.sock"
    with running(
        tmp_path,
        f"--model_name={NAME}",
        f"--model_base_path={HALF_PLUS_TWO}",
        f"--grpc_socket_path={socket_path}",
        ready_path=f"/v1/models/{NAME}",
    ) as server:
        client = Client(f"unix:{socket_path}")
        try:
            assert values(client.predict(predict_request(x_float(2.0))).outputs["y"]).tolist() == [[3.0]]
        finally:
            client.close()
        server.proc.terminate()
        assert server.proc.wait(timeout=30) == 0
    assert not socket_path.exists()


def listening_ports(pid):
    """The TCP ports the process `pid` listens on (Linux: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed since the listing (a connection or file the server just finished with)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_port_zero_turns_grpc_over_tcp_off(tmp_path):
    socket_path = tmp_path / "only.sock"
    with running(
        tmp_path,
        f"--model_name={NAME}",
        f"--model_base_path={HALF_PLUS_TWO}",
        "--port=0",
        f"--grpc_socket_path={socket_path}",
        ready_path=f"/v1/models/{NAME}",
    ) as server:
        assert listening_ports(server.proc.pid) == {server.rest_port}
        client = Client(f"unix:{socket_path}")
        try:
            assert values(client.predict(predict_request(x_float(2.0))).outputs["y"]).tolist() == [[3.0]]
        finally:
            client.close()


# ---- the demo models against TensorFlow's recorded outputs


@pytest.fixture(scope="module")
def expected():
    return expected_outputs()["models"]


def assert_close(actual, expected_values):
    actual, expected_values = np.asarray(actual, np.float64), np.asarray(expected_values, np.float64)
    assert actual.shape == expected_values.shape
    assert np.max(np.abs(actual - expected_values)) <= TOLERANCE


@pytest.fixture(scope="module")
def planet(serve):
    server = serve("planet", DEMO / "planet")
    client = Client(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def jpeg(serve):
    server = serve("jpeg_classifier", DEMO / "jpeg_classifier")
    client = Client(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def test_planet(planet, expected):
    model = expected["planet"]
    images = np.asarray(model["inputs"]["image"]["value"], dtype=np.float32)
    response = planet.predict(predict_request({"image": floats(images)}, name="planet"))
    assert spec_of(response) == ("planet", "serving_default", 1)
    assert set(response.outputs) == {"weather", "ground"}
    for alias in ("weather", "ground"):
        assert_close(values(response.outputs[alias]), model["outputs"][alias]["value"])


def test_planet_large_batch_beyond_grpcs_default_4mb(planet, expected):
    model = expected["planet"]
    images = np.asarray(model["inputs"]["image"]["value"], dtype=np.float32)
    batch = np.concatenate([images] * 11)  # 33 images, 6.5 MB
    response = planet.predict(predict_request({"image": floats(batch)}, name="planet", output_filter=["weather"]))
    assert list(response.outputs) == ["weather"]
    weather = values(response.outputs["weather"])
    assert weather.shape == (33, 4)
    assert_close(weather[-3:], model["outputs"]["weather"]["value"])


def test_planet_wrong_image_shape(planet):
    code, _ = rpc_error(planet.predictions.Predict, predict_request({"image": floats(np.zeros((1, 1, 1, 3)))}, name="planet"))
    assert code == INVALID_ARGUMENT


def test_jpeg_classifier_with_binary_jpeg_strings(jpeg, expected):
    model = expected["jpeg_classifier"]
    images = [base64.b64decode(b64) for b64 in model["inputs"]["image_bytes"]["b64"]]
    assert any(b"\xff" in image for image in images)  # binary, not UTF-8
    tensor = tf.make_tensor_proto(images, dtype=tf.string)
    assert list(tensor.string_val) == images
    response = jpeg.predict(predict_request({"image_bytes": tensor}, name="jpeg_classifier"))
    classes = response.outputs["classes"]
    assert classes.dtype == types_pb2.DT_STRING
    assert values(classes).astype(str).tolist() == model["outputs"]["classes"]["value"]
    assert_close(values(response.outputs["scores"]), model["outputs"]["scores"]["value"])


def test_jpeg_classifier_rejects_a_non_jpeg(jpeg):
    tensor = tf.make_tensor_proto([b"hello"], dtype=tf.string)
    code, _ = rpc_error(jpeg.predictions.Predict, predict_request({"image_bytes": tensor}, name="jpeg_classifier"))
    assert code == INVALID_ARGUMENT
    status = jpeg.models.GetModelStatus(status_request(name="jpeg_classifier"), timeout=TIMEOUT)
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
