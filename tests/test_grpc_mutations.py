"""Broken protobuf: byte-level mutations of valid gRPC requests (flipped, dropped and inserted
bytes, truncations, bumped varints) are answered with a client error, never with a server fault,
and the server keeps serving. The server runs with a memory budget, so that every message is also
walked for the bytes it decodes into before prost decodes it."""

import random

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from conftest import HALF_PLUS_TWO

MUTATIONS = 150  # per request; seeded, so every run sends the same bytes
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}


def example(**features):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                name: tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                if isinstance(value, float)
                else tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                for name, value in features.items()
            }
        )
    )


def requests_to_mutate():
    """(method, valid request) pairs covering every request message the server decodes."""
    floats = predict_pb2.PredictRequest()
    floats.model_spec.name = "default"
    floats.inputs["x"].CopyFrom(tf.make_tensor_proto(np.arange(8, dtype=np.float32)))
    float_val = predict_pb2.PredictRequest()
    float_val.model_spec.name = "default"
    float_val.model_spec.version.value = 123
    float_val.inputs["x"].dtype = tf.float32.as_datatype_enum
    float_val.inputs["x"].tensor_shape.dim.add().size = 4
    float_val.inputs["x"].float_val.extend([1.0, 2.0, 3.0, 4.0])
    float_val.output_filter.append("y")
    strings = predict_pb2.PredictRequest()
    strings.model_spec.name = "default"
    strings.model_spec.signature_name = "classify_x_to_y"
    strings.inputs["inputs"].CopyFrom(
        tf.make_tensor_proto([example(x=1.0).SerializeToString(), example(x=2.0).SerializeToString()])
    )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "default"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list_with_context.context.CopyFrom(example(pad=b"context"))
    classify.input.example_list_with_context.examples.extend([example(x=1.0), example(x=3.0)])
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.extend([example(x=1.0), example(x=2.0, y=b"unused")])
    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in [("classify_x_to_y", "classify"), ("regress_x_to_y2", "regress")]:
        task = multi.tasks.add()
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
        task.method_name = f"tensorflow/serving/{method}"
    multi.input.example_list.examples.extend([example(x=1.0)])
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "default"
    metadata.metadata_field.append("signature_def")
    return [
        ("Predict", floats, predict_pb2.PredictResponse),
        ("Predict", float_val, predict_pb2.PredictResponse),
        ("Predict", strings, predict_pb2.PredictResponse),
        ("Classify", classify, classification_pb2.ClassificationResponse),
        ("Regress", regress, regression_pb2.RegressionResponse),
        ("MultiInference", multi, inference_pb2.MultiInferenceResponse),
        ("GetModelMetadata", metadata, get_model_metadata_pb2.GetModelMetadataResponse),
    ]


def mutate(rng, message):
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        pos = rng.randrange(len(data))
        kind = rng.randrange(5)
        if kind == 0:
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[pos]
        elif kind == 2:
            data.insert(pos, rng.randrange(256))
        elif kind == 3:
            del data[pos:]
        else:
            # A length or varint made larger: its continuation bit set, or the byte maxed.
            data[pos] |= rng.choice([0x80, 0x7F, 0xFF])
    return bytes(data)


def test_mutated_requests_get_client_errors_and_the_server_keeps_serving(serve):
    server = serve("default", HALF_PLUS_TWO, "--max_request_bytes_in_flight=64000000")
    rng = random.Random(20261206)
    seen = {}
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for method, request, response_type in requests_to_mutate():
            call = channel.unary_unary(
                f"/tensorflow.serving.PredictionService/{method}",
                request_serializer=lambda raw: raw,
                response_deserializer=response_type.FromString,
            )
            valid = request.SerializeToString()
            call(valid, timeout=30)  # the unmutated request is answered
            for _ in range(MUTATIONS):
                mutated = mutate(rng, valid)
                try:
                    call(mutated, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                    assert code not in SERVER_FAULTS, (method, mutated.hex(), err.details())
                seen[code] = seen.get(code, 0) + 1
    assert server.alive()
    # The mutations reached the decoder and the checks behind it, not just one of them.
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 100, seen
    assert seen.get(grpc.StatusCode.OK, 0) > 10, seen
    assert server.post("/v1/models/default:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
