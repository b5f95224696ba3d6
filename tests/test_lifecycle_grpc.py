"""Model lifecycle over gRPC, with the official `tensorflow-serving-api` client: version labels in
`ModelSpec.version_label`, model status states, and `ModelService/HandleReloadConfigRequest`
replacing the served set of models."""

import pathlib

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from conftest import BAD_MODEL, HALF_PLUS_THREE, HALF_PLUS_TWO, TWO_VERSIONS, start, stop
from test_lifecycle import wait_for, write_config

TIMEOUT = 60
AVAILABLE = 30
END = 50


class Client:
    def __init__(self, server):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, name, x, version=None, label=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
        response = self.predictions.Predict(request, timeout=TIMEOUT)
        return response.model_spec.version.value, tf.make_ndarray(response.outputs["y"]).item()

    def version_of(self, name, label):
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = name
        request.model_spec.version_label = label
        request.metadata_field.append("signature_def")
        return self.predictions.GetModelMetadata(request, timeout=TIMEOUT).model_spec.version.value

    def states(self, name):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = self.models.GetModelStatus(request, timeout=TIMEOUT)
        except grpc.RpcError:
            return {}
        return {s.version: s.state for s in response.model_version_status}

    def reload(self, *models):
        request = model_management_pb2.ReloadConfigRequest()
        for name, base_path in models:
            config = request.config.model_config_list.config.add()
            config.name, config.base_path, config.model_platform = name, str(base_path), "tensorflow"
        return self.models.HandleReloadConfigRequest(request, timeout=TIMEOUT)

    def close(self):
        self.channel.close()


@pytest.fixture
def server_and_client(tmp_path):
    started = []

    def launch(*args):
        server = start(tmp_path, *args, ready_path="/v1/health/ready")
        client = Client(server)
        started.append((server, client))
        return server, client

    yield launch
    for server, client in started:
        client.close()
        stop(server)


def test_labels_over_grpc(tmp_path, server_and_client):
    config = write_config(
        tmp_path / "models.config",
        {"name": "m", "base_path": TWO_VERSIONS, "policy": "all {}", "labels": {"stable": 123, "canary": 124}},
    )
    _, client = server_and_client(f"--model_config_file={config}", "--allow_version_labels_for_unavailable_models")
    wait_for("both versions", lambda: client.states("m") == {124: AVAILABLE, 123: AVAILABLE})
    assert client.predict("m", 1.0, label="stable") == (123, 2.5)
    assert client.predict("m", 1.0, label="canary") == (124, 2.5)
    assert client.predict("m", 1.0) == (124, 2.5)
    assert client.predict("m", 1.0, version=123) == (123, 2.5)
    assert client.version_of("m", "stable") == 123
    with pytest.raises(grpc.RpcError) as raised:
        client.predict("m", 1.0, label="nope")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Unrecognized servable version label: nope"


def test_reload_config_over_grpc(server_and_client):
    _, client = server_and_client("--model_name=two", f"--model_base_path={HALF_PLUS_TWO}", "--max_num_load_retries=0")
    assert client.predict("two", 1.0) == (123, 2.5)
    response = client.reload(("three", HALF_PLUS_THREE))
    assert response.status.error_code == 0
    # Returns once the added model is available; the removed one unloads.
    assert client.predict("three", 1.0) == (123, 3.5)
    # Only a model_config_list is accepted, as in TF Serving.
    with pytest.raises(grpc.RpcError) as raised:
        client.models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=TIMEOUT)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("ServerModelConfig type not supported by HandleReloadConfigRequest.")
    with pytest.raises(grpc.RpcError) as raised:
        client.predict("two", 1.0)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    wait_for("two unloaded", lambda: client.states("two") == {123: END})
    # An invalid configuration is refused whole, with TF Serving's message.
    with pytest.raises(grpc.RpcError) as raised:
        client.reload(("three", HALF_PLUS_THREE), ("three", HALF_PLUS_TWO))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "Illegal to list model three multiple times in config list"
    assert client.predict("three", 1.0) == (123, 3.5)
    # A model that cannot load: UNKNOWN, naming it; the others keep serving.
    with pytest.raises(grpc.RpcError) as raised:
        client.reload(("three", HALF_PLUS_THREE), ("bad", BAD_MODEL))
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    assert raised.value.details().startswith("1 model(s) did not become available: {{name: bad version: 123} due to error: ")
    assert client.predict("three", 1.0) == (123, 3.5)
    assert client.states("bad") == {123: END}


def test_models_that_come_and_go_leave_no_threads_behind(server_and_client):
    """Each model has a thread watching its base path; a model removed from the configuration
    ends it once its versions are unloaded, and a name added again gets a new one that serves."""
    server, client = server_and_client("--model_name=keep", f"--model_base_path={HALF_PLUS_TWO}")

    def threads_of_removed_models():
        # Threads are named after the model's (TensorFlow's take the name of the thread that
        # started them: those of "keep" stay); Linux cuts names to 15 bytes.
        tasks = pathlib.Path(f"/proc/{server.proc.pid}/task").iterdir()
        names = [(task / "comm").read_text().strip() for task in tasks]
        return [name for name in names if name.startswith(("model-tmp", "model-again"))]

    for i in range(12):
        client.reload(("keep", HALF_PLUS_TWO), (f"tmp{i}", HALF_PLUS_THREE))
        assert client.predict(f"tmp{i}", 1.0) == (123, 3.5)
        client.reload(("keep", HALF_PLUS_TWO))
        wait_for(f"tmp{i} unloaded", lambda: client.states(f"tmp{i}") == {123: END})
    # The same name again, right after its removal: the new thread starts once the old one has
    # unloaded it.
    for _ in range(3):
        client.reload(("keep", HALF_PLUS_TWO), ("again", HALF_PLUS_THREE))
        assert client.predict("again", 1.0) == (123, 3.5)
        client.reload(("keep", HALF_PLUS_TWO))
    client.reload(("keep", HALF_PLUS_TWO))
    wait_for("the removed models' threads gone", lambda: threads_of_removed_models() == [])
    assert client.predict("keep", 1.0) == (123, 2.5)
