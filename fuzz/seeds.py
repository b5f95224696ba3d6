"""Writes the fuzz targets' starting corpora into fuzz/corpus/<target>/: valid inputs of every
kind each target reads, made with TensorFlow's and TF Serving's own Python packages where the
format is theirs. Run with the project's virtualenv: `.venv/bin/python fuzz/seeds.py`."""

import base64
import gzip
import json
import os
import pathlib
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, predict_pb2, prediction_log_pb2,
                                     regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tf-serving-testdata"

# rest_predict's header: the input count (1 + byte % 3), then each input's dtype, indices into its
# DTYPES (float, double, int32, uint8, int16, int8, string, complex64, int64, bool, bfloat16,
# uint16, complex128, half, uint32, uint64, qint8).
FLOAT, INT32, STRING, INT64, BOOL, COMPLEX64, HALF = 0, 2, 6, 8, 9, 7, 13


WRITTEN = []


def write(target, name, data):
    WRITTEN.append(name)
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)


def rest_predict():
    image = np.random.default_rng(0).random((1, 8, 8, 3)).round(6).tolist()
    long_list = ", ".join(f"{x:.17g}" for x in np.random.default_rng(1).random(40_000))
    cases = {
        "row_floats": ([0, FLOAT], {"instances": [1.0, 2.5, -3e-7, 4]}),
        "row_image": ([0, FLOAT], {"instances": image}),
        "columnar_named": ([1, FLOAT, STRING], {"inputs": {"a": [[1, 2], [3, 4]], "b": ["x", "y"]}}),
        "columnar_bare": ([0, INT64], {"inputs": [[1, -2], [3, 9007199254740993]]}),
        "row_objects": ([1, STRING, INT32], {"signature_name": "serving_default",
                                            "instances": [{"a": {"b64": "aGVsbG8="}, "b": [1, 2]},
                                                          {"a": "plain", "b": [3, 4]}]}),
        "bools": ([0, BOOL], {"instances": [[True, False], [False, True]]}),
        "complex": ([0, COMPLEX64], {"inputs": [[1.0, 2.0], [3.0, 4.0]]}),
        "half": ([0, HALF], {"instances": [65504, 1e-8, -0.0]}),
        "unknown_signature": ([0, FLOAT], {"signature_name": "other", "instances": [1]}),
        "three_inputs": ([2, FLOAT, INT32, STRING],
                         {"instances": [{"a": 1.5, "b": 2, "c": "s"}, {"a": 2.5, "b": 3, "c": "t"}]}),
    }
    for name, (head, body) in cases.items():
        write("rest_predict", name, bytes((head + [0, 0, 0])[:4]) + json.dumps(body).encode())
    # Long lists are decoded on two threads from a shared body.
    write("rest_predict", "long_list", bytes([0, FLOAT, 0, 0]) + f'{{"instances": [{long_list}]}}'.encode())
    write("rest_predict", "escapes", bytes([0, STRING, 0, 0]) + rb'{"instances": ["\u00e9\n\"", "\ud83d\ude00"]}')
    # Numbers with up to 22 significant digits, written by hand: the number routines' long routes.
    write("rest_predict", "long_numbers", bytes([0, FLOAT, 0, 0])
          + b'{"instances": [18447.123456781234567, 0.12345678901234567, 9999999.9999999999999, 1.5]}')


def rest_documents():
    cases = {
        "examples": {"signature_name": "classify", "context": {"c": 1, "d": ["u", "v"]},
                     "examples": [{"x": 1.0, "y": [1, 2], "s": "str", "b": {"b64": "AAEC"}}, {"x": [2.5, 3e10]}]},
        "b64_line": {"b64": base64.b64encode(b"\xff\xd8\xff\xe0 jpeg").decode()},
        "b64_line_key": {"key": 17, "b64": "aGVsbG8="},
        "dense_line": [[1.0, 2.0], [3.0, 4.0]],
        "dense_ints": [1, 2, 3],
        "value": {"a": [None, True, "x", -1.5e-300, {"b": []}]},
    }
    # The dense line's header: dtype float, shape [2, 2] (rank 1 + byte % 3, then 1 + byte % 4 per dimension), or int32 [3].
    heads = {"dense_line": [0, 1, 1, 1], "dense_ints": [2, 6, 0, 0]}
    for name, doc in cases.items():
        write("rest_documents", name, bytes(heads.get(name, [0, 0, 0, 0])) + json.dumps(doc).encode())


def predict_requests():
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "planet"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.random.default_rng(2).random((1, 4, 4, 3), dtype=np.float32)))
    request.inputs["floats"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 3.0], dtype=tf.float32))
    request.inputs["fill"].CopyFrom(tf.make_tensor_proto(0.5, shape=[2, 3]))
    request.inputs["strings"].CopyFrom(tf.make_tensor_proto([b"a", b"bc", b""]))
    # Images are sent as strings of a few KB: lengths of two varint bytes and more.
    request.inputs["jpeg"].CopyFrom(tf.make_tensor_proto([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2]))
    request.inputs["ints"].CopyFrom(tf.make_tensor_proto([[1, 2], [3, 4]], dtype=tf.int8))
    request.inputs["half"].CopyFrom(tf.make_tensor_proto([1.5, -2.0], dtype=tf.float16))
    request.inputs["complex"].CopyFrom(tf.make_tensor_proto([1 + 2j], dtype=tf.complex64))
    request.inputs["bool"].CopyFrom(tf.make_tensor_proto([True, False], dtype=tf.bool))
    request.inputs["u64"].CopyFrom(tf.make_tensor_proto([2**63 + 1], dtype=tf.uint64))
    request.output_filter.append("scores")
    yield "predict", request
    content = predict_pb2.PredictRequest()
    content.model_spec.name = "m"
    content.model_spec.version.value = 3
    tensor = tf.make_tensor_proto(np.arange(12, dtype=np.int64).reshape(3, 4))
    tensor.tensor_content = np.arange(12, dtype=np.int64).tobytes()
    content.inputs["x"].CopyFrom(tensor)
    strings = tf.make_tensor_proto([b"one", b"two"])
    strings.ClearField("string_val")
    strings.tensor_content = b"\x03\x03onetwo"
    content.inputs["s"].CopyFrom(strings)
    long = tf.make_tensor_proto([b"x" * 300, b"y"])
    long.ClearField("string_val")
    long.tensor_content = b"\xac\x02\x01" + b"x" * 300 + b"y"
    content.inputs["long"].CopyFrom(long)
    yield "predict_content", content


def example(**features):
    out = tf.train.Example()
    for name, value in features.items():
        feature = out.features.feature[name]
        if isinstance(value[0], float):
            feature.float_list.value.extend(value)
        elif isinstance(value[0], int):
            feature.int64_list.value.extend(value)
        else:
            feature.bytes_list.value.extend(value)
    return out


def grpc():
    for name, request in predict_requests():
        write("grpc_tensor", name, b"\x00" + request.SerializeToString())
        for alias, tensor in request.inputs.items():
            write("grpc_tensor", f"{name}_{alias}", b"\x01" + tensor.SerializeToString())
        write("grpc_footprint", name, b"\x00" + request.SerializeToString())
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "m"
    classify.model_spec.version_label = "stable"
    context = classify.input.example_list_with_context
    context.context.CopyFrom(example(c=[1.0]))
    context.examples.extend([example(x=[1.0, 2.0], s=[b"a"]), example(n=[1, 2, 3])])
    regress = regression_pb2.RegressionRequest()
    regress.input.example_list.examples.extend([example(x=[0.5]), example(x=[1.5])])
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name = "m"
    task.method_name = "tensorflow/serving/classify"
    multi.input.example_list.examples.extend([example(x=[3.0])])
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "m"
    metadata.metadata_field.append("signature_def")
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "m"
    reload = model_management_pb2.ReloadConfigRequest()
    config = reload.config.model_config_list.config.add()
    config.name = "m"
    config.base_path = "/models/m"
    config.model_version_policy.specific.versions.extend([1, 2])
    config.version_labels["stable"] = 1
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(next(predict_requests())[1])
    for pick, (name, message) in enumerate([("classify", classify), ("regress", regress), ("multi", multi),
                                            ("metadata", metadata), ("status", status), ("reload", reload),
                                            ("prediction_log", log)], start=1):
        write("grpc_footprint", name, bytes([pick]) + message.SerializeToString())


def framed(compressed, message):
    return bytes([compressed]) + len(message).to_bytes(4, "big") + message


def grpc_inflate():
    request = next(predict_requests())[1].SerializeToString()
    # The head byte: bit 0 deflate, bits 1-2 the inflated message limit (16, 1000, 64 KiB,
    # 1 MiB), bit 3 a 200 KB budget; then the piece size less one.
    cases = {
        "gzip_request": (6, framed(1, gzip.compress(request))),
        "deflate_request": (7, framed(1, zlib.compress(request))),
        "gzip_two_and_plain": (6, framed(1, gzip.compress(b"a" * 5000)) + framed(0, b"plain")
                               + framed(1, gzip.compress(b""))),
        "zeros_over_budget": (14, framed(1, gzip.compress(bytes(300_000)))),
        "over_limit": (2, framed(1, gzip.compress(b"x" * 2000))),
        "truncated": (6, framed(1, gzip.compress(request))[:-7]),
        "not_grpc": (6, b"GET / HTTP/1.1\r\n"),
    }
    for piece, (name, (head, body)) in enumerate(cases.items()):
        write("grpc_inflate", name, bytes([head, 3 + 17 * piece]) + body)


def tfrecord():
    path = CORPUS / "records.tmp"
    records = [example(x=[1.0]).SerializeToString(), b"", b"raw bytes \xff\x00", bytes(range(256)) * 4]
    for pick, kind in enumerate(["", "GZIP", "ZLIB"]):
        with tf.io.TFRecordWriter(str(path), options=kind) as writer:
            for record in records:
                writer.write(record)
        write("tfrecord", f"records_{kind or 'none'}", bytes([pick]) + path.read_bytes())
    path.unlink()
    # Whole streams of each compression over bytes that are not records.
    write("tfrecord", "gzip_garbage", b"\x01" + gzip.compress(b"not records at all"))
    write("tfrecord", "zlib_garbage", b"\x02" + zlib.compress(b"\x10\x00\x00\x00\x00\x00\x00\x00"))


def config_files():
    # The head byte picks the kind: 0 ModelServerConfig text, 1 ReloadConfigRequest wire,
    # 2 BatchingParameters, 3 MonitoringConfig, 4 SSLConfig.
    for pick, name in [(0, "good_model_config.txt"), (0, "bad_model_config.txt"), (2, "batching_config.txt"),
                       (3, "monitoring_config.txt")]:
        write("config_files", name, bytes([pick]) + (FIXTURES / name).read_bytes())
    config = model_server_config_pb2.ModelServerConfig()
    for i, policy in enumerate(["latest", "all", "specific"]):
        model = config.model_config_list.config.add()
        model.name = f"m{i}"
        model.base_path = f"file:///models/m{i}" if i else "/models/m0"
        if policy == "latest":
            model.model_version_policy.latest.num_versions = 2
        elif policy == "all":
            model.model_version_policy.all.SetInParent()
        else:
            model.model_version_policy.specific.versions.extend([1, 7])
            model.version_labels["stable"] = 7
    write("config_files", "policies_text", b"\x00" + text_format.MessageToString(config).encode())
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.CopyFrom(config)
    write("config_files", "policies_reload", b"\x01" + reload.SerializeToString())
    # The package has no BatchingParameters or SSLConfig module: their text is written here.
    write("config_files", "batching_padded",
          b"\x02max_batch_size { value: 16 } allowed_batch_sizes: [4, 8, 16] pad_variable_length_inputs: true\n"
          b"enable_large_batch_splitting { value: true } max_execution_batch_size { value: 16 }\n")
    write("config_files", "ssl",
          b'\x04server_key: "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n"\n'
          b'server_cert: "cert" client_verify: true\n')


if __name__ == "__main__":
    rest_predict()
    rest_documents()
    grpc()
    grpc_inflate()
    tfrecord()
    config_files()
    print(f"wrote {len(WRITTEN)} seeds under {CORPUS}")
