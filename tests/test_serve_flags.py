"""`oxserve serve` hands TF Serving's session flags (parallelism, --tensorflow_session_config_file)
to the TensorFlow session, refuses the flags of features it lacks, and applies
--enable_signature_method_name_check."""

import os
import socket

import grpc
import pytest
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from conftest import (
    HALF_PLUS_TWO,
    HALF_PLUS_TWO_TF2,
    failed_start,
    free_port,
    running,
    save_busy_model,
    thread_names,
    wait_for,
)


def threads(server):
    """The names of the server process's threads (Linux), less tokio's: its blocking pool grows
    and shrinks with load and would blur the count."""
    return sorted(name for name in thread_names(server.proc.pid) if not name.startswith("tokio"))


def thread_names_after_a_prediction(tmp_path, intra=0, inter=0, *flags):
    with running(
        tmp_path,
        "--model_name=default",
        f"--model_base_path={HALF_PLUS_TWO}",
        f"--tensorflow_intra_op_parallelism={intra}",
        f"--tensorflow_inter_op_parallelism={inter}",
        *flags,
        ready_path="/v1/models/default",
    ) as server:
        assert server.post("/v1/models/default:predict", {"instances": [1.0]}).ok
        return threads(server)


def test_parallelism_flags_size_tensorflows_thread_pools(tmp_path):
    narrow = thread_names_after_a_prediction(tmp_path, intra=1, inter=1)
    wide_inter = thread_names_after_a_prediction(tmp_path, intra=1, inter=5)
    wide_intra = thread_names_after_a_prediction(tmp_path, intra=7, inter=1)
    # TensorFlow names its inter-op pool's threads tf_Compute.
    assert narrow.count("tf_Compute") == 1
    assert wide_inter.count("tf_Compute") == 5
    # The intra-op pool has one thread per unit of parallelism beyond the caller's.
    assert len(wide_intra) - len(narrow) == 6, (narrow, wide_intra)


def test_tensorflows_own_kernels_unless_onednn_is_asked_for(tmp_path):
    """The wheel's oneDNN kernels, which it turns on by itself on CPUs with AVX512-VNNI, stop the
    process on some malformed inputs (see README); oxserve keeps them off unless asked."""
    env = {name: value for name, value in os.environ.items() if name != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow says at load whether oneDNN is on

    def load_log(env):
        with running(tmp_path, "--model_name=default", f"--model_base_path={HALF_PLUS_TWO}",
                     ready_path="/v1/models/default", env=env) as server:
            return server.log()

    assert "oneDNN custom operations are on" not in load_log(env)
    assert "oneDNN custom operations are on" in load_log(env | {"TF_ENABLE_ONEDNN_OPTS": "1"})


def test_session_parallelism_and_its_precedence(tmp_path):
    narrow = thread_names_after_a_prediction(tmp_path, 1, 1)
    both = thread_names_after_a_prediction(tmp_path, 0, 0, "--tensorflow_session_parallelism=3")
    assert both.count("tf_Compute") == 3
    assert len(both) - len(narrow) == 2 + 2, (narrow, both)
    # As in TF Serving, the intra/inter flags win over it, and all three at once are refused.
    inter = thread_names_after_a_prediction(tmp_path, 0, 2, "--tensorflow_session_parallelism=5")
    assert inter.count("tf_Compute") == 2
    stderr = failed_start("--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=1",
                          "--tensorflow_inter_op_parallelism=1")
    assert "Either configure server_options.tensorflow_session_parallelism or" in stderr
    assert "You cannot configure all." in stderr


def test_flag_forms_defaults_and_repeats(tmp_path):
    # --model_name defaults to "default"; `--flag value` reads as `--flag=value`; a flag given
    # twice takes its last value, as TF's flag parser (TF Serving's Docker image passes --port and
    # --rest_api_port ahead of the user's flags), so --port is the second one here.
    port = free_port()
    with running(tmp_path, "--model_base_path", str(HALF_PLUS_TWO), "--port", str(port),
                 "--rest_api_enable_cors_support", "--rest_api_enable_cors_support=false",
                 ready_path="/v1/models/default") as server:
        assert server.post("/v1/models/default:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
        assert "Access-Control-Allow-Origin" not in server.get("/v1/models/default").headers
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "default"
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
            assert status.model_version_status[0].version == 123
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.grpc_port), timeout=30)
    # --saved_model_tags picks the MetaGraphDef (half_plus_two has only "serve").
    stderr = failed_start("--saved_model_tags", "serve,gpu")
    assert "Could not find meta graph def matching supplied tags: { gpu serve }" in stderr, stderr


# A config written for a GPU deployment, with the classic optimizer's and Grappler's options and
# the experimental blocks: accepted as a whole.
SESSION_CONFIG = """
intra_op_parallelism_threads: 7
inter_op_parallelism_threads: 5
allow_soft_placement: true
gpu_options {
  allow_growth: true
  per_process_gpu_memory_fraction: 0.5
  experimental { virtual_devices { memory_limit_mb: [1024, 2048] } use_cuda_malloc_async: true }
}
graph_options {
  optimizer_options { opt_level: L1 do_function_inlining: true global_jit_level: OFF }
  rewrite_options {
    constant_folding: OFF
    arithmetic_optimization: AGGRESSIVE
    memory_optimization: NO_MEM_OPT
    meta_optimizer_iterations: ONE
    min_graph_nodes: -1
    auto_parallel { enable: false num_replicas: 1 }
    scoped_allocator_opts { enable_op: "CollectiveReduce" }
    optimizers: ["constfold", "pruning"]
    inter_optimizer_verifier_config { structure_verifier: ON }
  }
}
experimental {
  disable_thread_spinning: true
  session_metadata { name: "half_plus_two" version: 123 }
  mlir_bridge_rollout: MLIR_BRIDGE_ROLLOUT_DISABLED
}
"""


def test_session_config_file_configures_the_session(tmp_path):
    # The text is one TensorFlow's own parser takes.
    text_format.Parse(SESSION_CONFIG, config_pb2.ConfigProto())
    config = tmp_path / "session.pbtxt"
    config.write_text(SESSION_CONFIG)
    narrow = thread_names_after_a_prediction(tmp_path, 1, 1)
    from_file = thread_names_after_a_prediction(tmp_path, 0, 0, f"--tensorflow_session_config_file={config}")
    assert from_file.count("tf_Compute") == 5
    assert len(from_file) - len(narrow) == 6 + 4, (narrow, from_file)
    # The parallelism flags, when given, replace the file's thread counts.
    overridden = thread_names_after_a_prediction(tmp_path, 0, 2, f"--tensorflow_session_config_file={config}")
    assert overridden.count("tf_Compute") == 2


def test_session_config_file_reaches_tensorflow(tmp_path):
    # No CPU device: TensorFlow itself refuses to create the session, so the model does not load.
    config = tmp_path / "no_cpu.pbtxt"
    config.write_text('device_count { key: "CPU" value: 0 }\n')
    assert "No CPU devices are available" in failed_start(f"--tensorflow_session_config_file={config}")
    # The experimental block reaches it too: an executor TensorFlow does not have.
    config.write_text('experimental { executor_type: "NO_SUCH_EXECUTOR" }\n')
    stderr = failed_start(f"--tensorflow_session_config_file={config}")
    assert "No executor factory registered for the given executor type: NO_SUCH_EXECUTOR" in stderr


def test_thread_counts_tensorflow_would_crash_on_are_refused(tmp_path):
    """TensorFlow aborts the process on these (a failed CHECK, or a crash): refused by name."""
    config = tmp_path / "threads.pbtxt"
    for text, field in [
        ("intra_op_parallelism_threads: -5", "intra_op_parallelism_threads"),
        ("inter_op_parallelism_threads: 2147483647", "inter_op_parallelism_threads"),
        ("session_inter_op_thread_pool { num_threads: -1 }", "session_inter_op_thread_pool[0].num_threads"),
    ]:
        config.write_text(text + "\n")
        stderr = failed_start(f"--tensorflow_session_config_file={config}")
        assert f"{field} must be between" in stderr, stderr


def test_unreadable_session_config_file_stops_the_server(tmp_path):
    config = tmp_path / "bad.pbtxt"
    config.write_text("intra_op_parallelism_threads: 2\nrpc_options { use_rpc_for_inprocess_master: true }\n")
    stderr = failed_start(f"--tensorflow_session_config_file={config}")
    assert "reading --tensorflow_session_config_file" in stderr
    # The file, line and column, and the field TensorFlow has but oxserve does not take yet.
    assert f"{config}:2:" in stderr
    assert "rpc_options" in stderr
    missing = tmp_path / "missing.pbtxt"
    stderr = failed_start(f"--tensorflow_session_config_file={missing}")
    assert "reading --tensorflow_session_config_file" in stderr
    assert f"could not read ConfigProto file {missing}" in stderr


@pytest.mark.parametrize("flag, api", [("--port", "gRPC"), ("--rest_api_port", "REST")])
def test_a_port_in_use_fails_the_start(flag, api):
    # After the model has loaded: the process must still end, with TF Serving's words and status.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = failed_start(f"{flag}={port}")
    assert f"Failed to start server. Error: binding the {api} API to port {port}: " in stderr, stderr


def test_flags_of_missing_features_are_refused_and_tuning_flags_accepted(tmp_path):
    for flag in ["--thread_pool_factory_config_file=/etc/thread_pool.conf", "--prefer_tflite_model",
                 "--use_alts_credentials=true"]:
        name = flag.split("=")[0]
        assert f"{name} asks for a tensorflow_model_server feature that this oxserve build does not support yet" in (
            failed_start(flag)
        )
    # Flags that tune TF Serving's own internals are accepted (and do nothing here), and so are
    # the missing features' flags at their defaults, as deployments that spell out every flag give them.
    with running(
        tmp_path,
        "--model_name=default",
        f"--model_base_path={HALF_PLUS_TWO}",
        "--num_load_threads=4",
        "--flush_filesystem_caches=false",
        "--num_tflite_pools=2",
        "--prefer_tflite_model=false",
        "--use_alts_credentials=false",
        "--thread_pool_factory_config_file=",
        ready_path="/v1/models/default",
    ) as server:
        assert server.post("/v1/models/default:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}


def test_signature_method_name_check(tmp_path):
    """--enable_signature_method_name_check: Classify and Regress take only signatures of their
    own method, Predict predict/classify/regress ones (TF Serving's messages and codes). Off by
    default, so that TF2 exports (every signature `tensorflow/serving/predict`) classify."""
    tf2_classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}
    with running(tmp_path, "--model_name=tf2", f"--model_base_path={HALF_PLUS_TWO_TF2}",
                 ready_path="/v1/models/tf2") as server:
        assert server.post("/v1/models/tf2:classify", tf2_classify).status_code == 200
    with running(tmp_path, "--model_name=tf2", f"--model_base_path={HALF_PLUS_TWO_TF2}",
                 "--enable_signature_method_name_check", ready_path="/v1/models/tf2") as server:
        response = server.post("/v1/models/tf2:classify", tf2_classify)
        assert response.status_code == 400
        assert response.json() == {"error": "Expected classification signature method_name to be "
                                            "tensorflow/serving/classify. Was: tensorflow/serving/predict"}
        # The init op's signature has no method name: gRPC Predict refuses it first, as INTERNAL.
        # (Over REST the body is read against the signature's inputs first, and it has none.)
        expected = ("Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
                    "tensorflow/serving/classify, tensorflow/serving/regress}. Was: ")
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tf2"
            request.model_spec.signature_name = "__saved_model_init_op"
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(request, timeout=30)
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INTERNAL, expected)
    with running(tmp_path, "--model_name=tf1", f"--model_base_path={HALF_PLUS_TWO}",
                 "--enable_signature_method_name_check=true", ready_path="/v1/models/tf1") as server:
        examples = {"examples": [{"x": 1.0}]}
        assert server.post("/v1/models/tf1:classify", {"signature_name": "classify_x_to_y", **examples}).ok
        assert server.post("/v1/models/tf1:regress", {"signature_name": "regress_x_to_y", **examples}).ok
        # Predict also takes a classification signature.
        assert server.post("/v1/models/tf1:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
        response = server.post("/v1/models/tf1:regress", {"signature_name": "classify_x_to_y", **examples})
        assert response.status_code == 400
        assert response.json() == {"error": "Expected regression signature method_name to be "
                                            "tensorflow/serving/regress. Was: tensorflow/serving/classify"}


def test_xla_compiled_signatures_run(tmp_path):
    """A signature traced with jit_compile=True runs (TF Serving runs it only with
    --xla_cpu_compilation_enabled, which is accepted here and changes nothing)."""
    import numpy as np
    import tensorflow as tf

    class Softmax(tf.Module):
        @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def serve(self, x):
            return {"y": tf.nn.softmax(x * 2.0 + 1.0)}

    module = Softmax()
    base = tmp_path / "xla"
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    expected = module.serve(tf.constant(x))["y"].numpy()
    for flags in ((), ("--xla_cpu_compilation_enabled=true",)):
        with running(tmp_path, "--model_name=xla", f"--model_base_path={base}", *flags,
                     ready_path="/v1/models/xla") as server:
            response = server.post("/v1/models/xla:predict", {"instances": x.tolist()})
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-6)


def test_rest_api_num_threads_bounds_the_requests_processed_at_once(tmp_path):
    """With --rest_api_num_threads=1, a request waits while another is processed, within the REST
    timeout; the slot is held until the work ends, even after its client was answered 504."""
    import threading
    import time

    base = tmp_path / "busy"
    save_busy_model(base)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    predict = "/v1/models/busy:predict"
    with running(tmp_path, "--model_name=busy", f"--model_base_path={base}", "--rest_api_num_threads=1",
                 "--rest_api_timeout_in_ms=2000", ready_path="/v1/models/busy") as server:
        assert server.post(predict, {"instances": [0.0]}).status_code == 200
        answers = {}
        blocked = threading.Thread(target=lambda: answers.update(
            blocked=server.post(predict, {"signature_name": "read", "instances": [str(fifo)]})))
        blocked.start()
        time.sleep(0.5)  # the read has taken the slot (else `waiting` gets 200 below)
        waiting = server.post(predict, {"instances": [0.0]})
        blocked.join()
        assert answers["blocked"].status_code == 504, answers["blocked"].text
        assert waiting.status_code == 504, waiting.text
        # The read is still blocked in TensorFlow and holds the only slot.
        assert server.post(predict, {"instances": [0.0]}).status_code == 504
        # Lets the read end (ENXIO if it were not waiting on the FIFO).
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        wait_for("the slot to be free", lambda: server.post(predict, {"instances": [0.0]}).status_code == 200)


def test_a_timed_out_request_is_cancelled_in_tensorflow(tmp_path):
    """A request past its REST timeout stops running in TensorFlow (RunOptions.timeout_in_ms, as
    TF Serving sets it): its slot is free for the next request well before its 60 s loop ends."""
    base = tmp_path / "busy"
    save_busy_model(base)
    predict = "/v1/models/busy:predict"
    with running(tmp_path, "--model_name=busy", f"--model_base_path={base}", "--rest_api_num_threads=1",
                 "--rest_api_timeout_in_ms=2000", ready_path="/v1/models/busy") as server:
        spin = server.post(predict, {"instances": [60.0]})
        assert spin.status_code == 504, spin.text
        after = server.post(predict, {"instances": [0.0]})
        assert after.status_code == 200, after.text
        assert after.json() == {"predictions": [0.0]}