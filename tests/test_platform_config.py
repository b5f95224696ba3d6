"""`--platform_config_file`: the "tensorflow" platform's SessionBundleConfig, read from a text
PlatformConfigMap, decides the session config, batching, SavedModel tags and warm-up in place of
the flags TF Serving would otherwise build it from (those flags are then ignored, with a warning).
"""

import shutil

from conftest import (
    HALF_PLUS_TWO,
    MONITORING_CONFIG,
    assert_failed_start,
    failed_start,
    free_port,
    metric,
    metric_families,
    run_cli,
    running,
    thread_names,
)

ADAPTER = "type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig"


def platform_config(tmp_path, legacy_config, name="platform.pbtxt"):
    """Writes a PlatformConfigMap whose "tensorflow" platform has this SessionBundleConfig text."""
    path = tmp_path / name
    path.write_text(
        'platform_configs {\n'
        '  key: "tensorflow"\n'
        '  value {\n'
        '    source_adapter_config {\n'
        f'      [{ADAPTER}] {{\n'
        f'        legacy_config {{\n{legacy_config}\n        }}\n'
        '      }\n'
        '    }\n'
        '  }\n'
        '}\n'
    )
    return path


def serving(tmp_path, base_path, *flags):
    return running(
        tmp_path,
        "--model_name=default",
        f"--model_base_path={base_path}",
        *flags,
        ready_path="/v1/models/default",
    )


def tf_compute_threads(server):
    """TensorFlow names the threads of its inter-op pool tf_Compute."""
    return thread_names(server.proc.pid).count("tf_Compute")


def predict(server, instances):
    return server.post("/v1/models/default:predict", {"instances": instances})


def test_session_config_and_batching_come_from_the_platform_config(tmp_path):
    config = platform_config(
        tmp_path,
        "session_config { inter_op_parallelism_threads: 3 intra_op_parallelism_threads: 1 }\n"
        "batching_parameters { max_batch_size { value: 2 } batch_timeout_micros { value: 0 } }",
    )
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 64 }\n")
    with serving(
        tmp_path,
        HALF_PLUS_TWO,
        f"--platform_config_file={config}",
        # All replaced by the platform config: TF Serving reads none of them then.
        "--enable_batching",
        f"--batching_parameters_file={params}",
        "--tensorflow_inter_op_parallelism=5",
    ) as server:
        assert predict(server, [1.0, 2.0]).json() == {"predictions": [2.5, 3.0]}
        assert tf_compute_threads(server) == 3
        # The platform's max_batch_size, not the ignored file's.
        resp = predict(server, [1.0, 2.0, 3.0])
        assert resp.status_code == 400
        assert resp.json() == {"error": "Task size 3 is larger than maximum input batch size 2"}
        log = server.log()
        for flag in ("enable_batching", "batching_parameters_file", "tensorflow_inter_op_parallelism"):
            assert f"--{flag} is ignored: --platform_config_file is set" in log, log


def test_no_batching_parameters_means_no_batching_whatever_the_flags(tmp_path):
    config = platform_config(tmp_path, "session_config { inter_op_parallelism_threads: 2 }")
    params = tmp_path / "batching.pbtxt"
    params.write_text("max_batch_size { value: 2 }\n")
    with serving(
        tmp_path,
        HALF_PLUS_TWO,
        f"--platform_config_file={config}",
        "--enable_batching=true",
        f"--batching_parameters_file={params}",
    ) as server:
        assert predict(server, [1.0, 2.0, 3.0]).json() == {"predictions": [2.5, 3.0, 3.5]}
        assert tf_compute_threads(server) == 2
        assert "batching enabled" not in server.log()
        assert "--enable_batching is ignored: --platform_config_file is set" in server.log()


def test_saved_model_tags_come_from_the_platform_config(tmp_path):
    # half_plus_two has only the "serve" MetaGraphDef: the platform's tags reach the loader.
    config = platform_config(tmp_path, 'saved_model_tags: "serve" saved_model_tags: "gpu"')
    stderr = failed_start(f"--platform_config_file={config}")
    assert "gpu" in stderr, stderr
    # Empty: the default tag set, "serve" (the ignored flag's value is not used).
    config = platform_config(tmp_path, "")
    with serving(tmp_path, HALF_PLUS_TWO, f"--platform_config_file={config}", "--saved_model_tags=gpu") as server:
        assert predict(server, [1.0]).json() == {"predictions": [2.5]}
        assert "--saved_model_tags is ignored" in server.log()


def warmup_model(tmp_path, records):
    import tensorflow as tf

    base = tmp_path / "model"
    version = base / "1"
    shutil.copytree(HALF_PLUS_TWO / "00000123", version)
    extra = version / "assets.extra"
    extra.mkdir()
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return base


def predict_log(inputs):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def test_warmup_comes_from_the_platform_config(tmp_path):
    base = warmup_model(tmp_path, [predict_log({"x": [[1.0], [2.0]]})] * 2)
    config = platform_config(
        tmp_path, "enable_model_warmup: true\nmodel_warmup_options { num_request_iterations { value: 3 } }"
    )
    with serving(
        tmp_path,
        base,
        f"--platform_config_file={config}",
        "--num_request_iterations_for_warmup=5",
        f"--monitoring_config_file={MONITORING_CONFIG}",
    ) as server:
        assert "Number of warmup records read: 2." in server.log()
        runtime = ":tensorflow:serving:runtime_latency"
        # 2 records x the platform's 3 iterations, not the ignored flag's 5.
        assert metric(metric_families(server), runtime, runtime + "_count", API="Predict") == 6
        assert "--num_request_iterations_for_warmup is ignored" in server.log()


def test_warmup_is_off_unless_the_platform_config_enables_it(tmp_path):
    # A record that fails: the load fails only if it is replayed.
    base = warmup_model(tmp_path, [predict_log({"nope": [1.0]})])
    config = platform_config(tmp_path, "session_config { inter_op_parallelism_threads: 1 }")
    # enable_model_warmup defaults to false in SessionBundleConfig (the flag's default is true).
    with serving(tmp_path, base, f"--platform_config_file={config}", "--enable_model_warmup=true") as server:
        assert predict(server, [1.0]).json() == {"predictions": [2.5]}
        assert "warmup data" not in server.log()
        assert "--enable_model_warmup is ignored: --platform_config_file is set" in server.log()
    config = platform_config(tmp_path, "enable_model_warmup: true", name="warm.pbtxt")
    result = run_cli(
        "serve",
        f"--port={free_port()}",
        f"--rest_api_port={free_port()}",
        f"--model_base_path={base}",
        "--max_num_load_retries=0",
        f"--platform_config_file={config}",
    )
    assert_failed_start(result)
    assert "Warm-up record 1 of" in result.stderr and "nope" in result.stderr, result.stderr


def test_unusable_platform_configs_stop_the_server(tmp_path):
    missing = tmp_path / "missing.pbtxt"
    stderr = failed_start(f"--platform_config_file={missing}")
    assert "reading --platform_config_file" in stderr
    assert f"could not read PlatformConfigMap file {missing}" in stderr

    cases = {
        # A parse error names the file, line and column.
        "syntax.pbtxt": ('platform_configs {\n  key: "tensorflow"\n  value {\n', ["reading --platform_config_file", "syntax.pbtxt:4:"]),
        "empty.pbtxt": ("", ['no "tensorflow" platform']),
        "onnx.pbtxt": (
            'platform_configs { key: "tensorflow" value {} }\nplatform_configs { key: "onnx" value {} }\n',
            ['platform "onnx"', 'serves "tensorflow" SavedModels only'],
        ),
        "no_adapter.pbtxt": (
            'platform_configs { key: "tensorflow" value {} }\n',
            ['the "tensorflow" platform has no source_adapter_config', ADAPTER],
        ),
        "other_any.pbtxt": (
            'platform_configs { key: "tensorflow" value { source_adapter_config {\n'
            "  [type.googleapis.com/tensorflow.serving.SessionBundleConfig] { } } } }\n",
            ["is a [type.googleapis.com/tensorflow.serving.SessionBundleConfig]", f"oxserve takes a [{ADAPTER}]"],
        ),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        stderr = failed_start(f"--platform_config_file={path}")
        for part in expected:
            assert part in stderr, (name, stderr)
            assert str(path) in stderr, (name, stderr)


def test_session_bundle_settings_oxserve_does_not_honour_are_refused(tmp_path):
    cases = [
        ('session_target: "grpc://localhost:2222"', ['session_target "grpc://localhost:2222"']),
        ("enable_session_metadata: true", ["enable_session_metadata is set: oxserve does not support it"]),
        ("prefer_tflite_model: true", ["prefer_tflite_model is set"]),
        ("session_run_load_threadpool_index { value: 0 }", ["session_run_load_threadpool_index is set"]),
        ("experimental_transient_ram_bytes_during_load: 1000", ["experimental_transient_ram_bytes_during_load is set"]),
        (
            "enable_model_warmup: true model_warmup_options { num_model_warmup_threads { value: 4 } }",
            ["num_model_warmup_threads"],
        ),
        # Checked as the --batching_parameters_file is.
        (
            "batching_parameters { max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4 }",
            ["Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"],
        ),
        # A field oxserve's SessionBundleConfig leaves out does not parse, and is named.
        ('experimental_fixed_input_tensors { name: "x" }', ["experimental_fixed_input_tensors", "platform.pbtxt:"]),
    ]
    for legacy_config, expected in cases:
        config = platform_config(tmp_path, legacy_config)
        stderr = failed_start(f"--platform_config_file={config}")
        for part in expected:
            assert part in stderr, (legacy_config, stderr)
