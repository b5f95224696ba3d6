"""Model metadata echoes the SignatureDefs as the SavedModel holds them, as TF Serving's
GetModelMetadata does (it copies `meta_graph_def.signature_def()`): dimension names, sparse
(COO) encodings and default values included, over gRPC and REST."""

import grpc
import pytest
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

TIMEOUT = 30


def export_model(version_dir):
    """A TF1 graph with a dense input whose dimensions are named and which has a default value,
    and a sparse input; returns the SignatureDefs written to saved_model.pb."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        s = v1.sparse_placeholder(tf.float32, [None, 3], name="s")
        y = tf.identity(x * 2.0, name="y")
        total = tf.identity(tf.sparse.reduce_sum(s, axis=1), name="total")
        info = v1.saved_model.utils.build_tensor_info
        dense = v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": y})
        for dim, name in zip(dense.inputs["x"].tensor_shape.dim, ["batch", "features"]):
            dim.name = name
        dense.defaults["x"].CopyFrom(tf.make_tensor_proto([[0.5, 0.1, -2.0]], tf.float32))
        sparse = v1.saved_model.signature_def_utils.build_signature_def(
            {"s": info(s)}, {"total": info(total)}, "tensorflow/serving/predict"
        )
        assert sparse.inputs["s"].HasField("coo_sparse")
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(str(version_dir))
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": dense, "sparse_sum": sparse},
                strip_default_attrs=True,
            )
            builder.save()
    return {"serving_default": dense, "sparse_sum": sparse}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("metadata_model")
    return base, export_model(base / "1")


@pytest.fixture(scope="module", params=["plain", "batching"])
def model(request, exported, serve):
    """The model served as it is, and behind --enable_batching (whose wrapper must pass the
    SignatureDefs through)."""
    base, signature_defs = exported
    flags = ["--enable_batching"] if request.param == "batching" else []
    return serve("annotated", base, *flags), signature_defs


def file_map(signature_defs):
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    return signature_map


def test_grpc_metadata_is_the_files_signature_defs(model):
    server, signature_defs = model
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "annotated"
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, timeout=TIMEOUT)
    served = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(served)
    assert served == file_map(signature_defs)
    assert [d.name for d in served.signature_def["serving_default"].inputs["x"].tensor_shape.dim] == [
        "batch",
        "features",
    ]


def test_rest_metadata_prints_the_files_signature_defs(model):
    server, signature_defs = model
    resp = server.get("/v1/models/annotated/metadata")
    assert resp.status_code == 200, resp.text
    served = resp.json()["metadata"]["signature_def"]
    expected = json_format.MessageToDict(
        file_map(signature_defs),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    assert served == expected
    dense = served["signature_def"]["serving_default"]
    assert dense["defaults"]["x"]["dtype"] == "DT_FLOAT"
    assert dense["inputs"]["x"]["tensor_shape"]["dim"][1] == {"size": "3", "name": "features"}
    # Protobuf's printer puts the set member of a oneof after the other fields (as `name` comes
    # after `dtype` and `tensor_shape` in TF Serving's golden files).
    assert list(served["signature_def"]["sparse_sum"]["inputs"]["s"]) == [
        "dtype",
        "tensor_shape",
        "coo_sparse",
    ]
