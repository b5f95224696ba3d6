"""Graphs TensorFlow would abort the process on are refused before TensorFlow loads them: the
version fails with an error, the process lives, and the version already loaded keeps serving."""

import os
import shutil

import pytest

from conftest import HALF_PLUS_TWO, run_cli, wait_for, writable

HUGE = 2**20


@pytest.fixture(scope="module")
def huge_const_version(tmp_path_factory):
    """half_plus_two plus a Const whose value declares [2^20] * 4: 2^80 elements, more than int64
    counts, which fails a CHECK (SIGABRT) inside TF_LoadSessionFromSavedModel."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    version = tmp_path_factory.mktemp("huge_const") / "1"
    shutil.copytree(HALF_PLUS_TWO / "00000123", version)
    writable(version)
    model = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    node = model.meta_graphs[0].graph_def.node.add(name="hugeconst", op="Const")
    node.attr["dtype"].type = types_pb2.DT_FLOAT
    tensor = node.attr["value"].tensor
    tensor.dtype = types_pb2.DT_FLOAT
    for _ in range(4):
        tensor.tensor_shape.dim.add().size = HUGE
    tensor.float_val.append(1.0)
    (version / "saved_model.pb").write_bytes(model.SerializeToString())
    return version


def states(server, model):
    """{version: (state, error_code, error_message)}; fails at once if the server has died."""
    assert server.alive(), f"oxserve died (exit status {server.proc.returncode}):\n{server.log()[-3000:]}"
    response = server.get(f"/v1/models/{model}")
    assert response.status_code == 200, response.text
    return {
        int(v["version"]): (v["state"], v["status"]["error_code"], v["status"]["error_message"])
        for v in response.json()["model_version_status"]
    }


def prediction(server, model):
    response = server.post(f"/v1/models/{model}:predict", {"instances": [1.0]})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def refusal(path):
    return (f'{path}/saved_model.pb: node "hugeconst" (op Const), attr "value": invalid shape '
            f"[{HUGE},{HUGE},{HUGE},{HUGE}]: too large (more than 2**63 - 1 elements)")


def test_a_version_tensorflow_would_abort_on_fails_and_the_loaded_one_keeps_serving(
        tmp_path, serve, huge_const_version):
    base = tmp_path / "model"
    base.mkdir()
    shutil.copytree(HALF_PLUS_TWO / "00000123", base / "1")
    server = serve("m", base, "--max_num_load_retries=0")
    assert prediction(server, "m") == 2.5
    # Moved in whole, so that it is loaded at the next scan.
    shutil.copytree(huge_const_version, tmp_path / "staging")
    os.rename(tmp_path / "staging", base / "2")

    state, code, message = wait_for(
        "version 2 to fail", lambda: states(server, "m").get(2, ("",))[0] == "END" and states(server, "m")[2])
    assert code == "INVALID_ARGUMENT"
    assert message.startswith(refusal(base / "2")), message
    assert states(server, "m")[1][0] == "AVAILABLE"
    assert prediction(server, "m") == 2.5
    assert server.alive()


def test_run_on_such_a_model_exits_with_an_error(huge_const_version):
    out = run_cli("run", "--dir", huge_const_version, "--tag_set", "serve",
                  "--signature_def", "serving_default", "--input_exprs", "x=[[1.0]]")
    # A negative status is a signal (SIGABRT: -6).
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert refusal(huge_const_version) in out.stderr, out.stderr
