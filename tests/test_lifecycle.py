"""Model lifecycle with the real binary: model config files (several models, policies, labels,
reload by polling), version directories appearing and failing while requests run, warm-up,
Prometheus metrics, health endpoints, `GET /v1/models` and graceful shutdown.

Versions are told apart by copying half_plus_three's files in as a new version of half_plus_two:
x=1 predicts 2.5 on half_plus_two and 3.5 on half_plus_three."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import (
    BAD_MODEL,
    BIN,
    HALF_PLUS_THREE,
    HALF_PLUS_TWO,
    METRICS_PATH,
    MONITORING_CONFIG,
    TESTDATA,
    TWO_VERSIONS,
    assert_failed_start,
    free_port,
    metric,
    metric_families,
    run_cli,
    save_busy_model,
    start,
    stop,
    thread_names,
    wait_for,
    writable,
)
READY = "/v1/health/ready"


# ---- helpers


def copy_version(src_version_dir, base, version):
    """Copies a version directory whole (modification times kept, so it is loaded at once)."""
    dst = base / str(version)
    shutil.copytree(src_version_dir, dst)
    writable(dst)
    return dst


def config_text(*models):
    """A text-format ModelServerConfig; each model is a dict: name, base_path[, policy, labels]."""
    lines = ["model_config_list {"]
    for model in models:
        lines += ["  config {", f'    name: "{model["name"]}"', f'    base_path: "{model["base_path"]}"',
                  '    model_platform: "tensorflow"']
        if model.get("policy"):
            lines.append(f"    model_version_policy {{ {model['policy']} }}")
        for label, version in model.get("labels", {}).items():
            lines.append(f'    version_labels {{ key: "{label}" value: {version} }}')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_config(path, *models):
    # Written aside and renamed, as a config management tool would: never read half-written.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config_text(*models))
    os.replace(tmp, path)
    return path


def predict(server, model, x, suffix=""):
    return server.post(f"/v1/models/{model}{suffix}:predict", {"instances": [x]})


def prediction(server, model, x, suffix=""):
    response = predict(server, model, x, suffix)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def states(server, model):
    """{version: (state, error_code, error_message)} from the REST status call."""
    response = server.get(f"/v1/models/{model}")
    if response.status_code != 200:
        return {}
    return {
        int(v["version"]): (v["state"], v["status"]["error_code"], v["status"]["error_message"])
        for v in response.json()["model_version_status"]
    }


def state_names(server, model):
    return {version: state for version, (state, _, _) in states(server, model).items()}


def serve_cli(*args, timeout=120):
    """Runs `oxserve serve` expecting a failed start-up."""
    out = run_cli("serve", f"--rest_api_port={free_port()}", f"--port={free_port()}", *args, timeout=timeout)
    assert_failed_start(out)
    return out


@pytest.fixture
def launched(tmp_path):
    """start(...) that stops the server at the end of the test."""
    servers = []

    def launch(*args, ready_path=READY):
        server = start(tmp_path, *args, ready_path=ready_path)
        servers.append(server)
        return server

    yield launch
    for server in servers:
        stop(server)


# ---- model config files


def test_two_models_from_tf_servings_config(tmp_path, launched):
    # TF Serving's own test config, with its ${...} placeholders replaced by real paths (TF
    # Serving expands nothing in this file, and neither does oxserve: see the next test).
    text = (TESTDATA / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(HALF_PLUS_TWO))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(HALF_PLUS_THREE))
    config = tmp_path / "models.config"
    config.write_text(text)
    server = launched(f"--model_config_file={config}")
    assert prediction(server, "half_plus_two", 1.0) == 2.5
    assert prediction(server, "half_plus_three", 1.0) == 3.5
    assert prediction(server, "half_plus_two", 1.0, "/versions/123") == 2.5
    listing = server.get("/v1/models").json()["models"]
    assert [m["name"] for m in listing] == ["half_plus_three", "half_plus_two"]
    for model in listing:
        assert model["model_version_status"] == [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
        assert model["version_labels"] == {}
    assert listing[1]["base_path"] == str(HALF_PLUS_TWO)
    # --model_name/--model_base_path are ignored next to a config file, as in TF Serving.
    assert predict(server, "default", 1.0).status_code == 404


def test_config_placeholders_are_not_expanded():
    out = serve_cli(f"--model_config_file={TESTDATA / 'good_model_config.txt'}")
    assert (
        "Expected model half_plus_two to have an absolute path or URI; got base_path()=${TEST_HALF_PLUS_TWO_DIR}"
        in out.stderr
    )


def test_base_paths_name_local_directories(tmp_path, launched):
    # TF Serving takes URIs; oxserve reads the local file system: file:// URIs, and a clear
    # refusal for the others (not a server that waits forever for versions).
    for flags in (["--model_base_path=gs://bucket/models/m"],
                  [f"--model_config_file={write_config(tmp_path / 'gs.config', {'name': 'm', 'base_path': 'gs://bucket/m'})}"]):
        out = serve_cli("--model_name=m", *flags)
        assert "oxserve reads models from the local file system only, not from gs:// URIs" in out.stderr, out.stderr
    server = launched("--model_name=m", f"--model_base_path=file://{HALF_PLUS_TWO}")
    assert prediction(server, "m", 1.0) == 2.5


def test_config_syntax_errors_name_file_line_and_column(tmp_path):
    bad = TESTDATA / "bad_model_config.txt"  # TF Serving's "improperly formatted file"
    out = serve_cli(f"--model_config_file={bad}")
    assert f"{bad}:1:12: invalid text-format ModelServerConfig" in out.stderr, out.stderr
    typo = tmp_path / "typo.config"
    typo.write_text(f'model_config_list {{\n  config {{\n    name: "a"\n    base_pth: "{HALF_PLUS_TWO}"\n  }}\n}}\n')
    out = serve_cli(f"--model_config_file={typo}")
    assert f"{typo}:4:5: invalid text-format ModelServerConfig: field 'base_pth' not found" in out.stderr, out.stderr
    out = serve_cli(f"--model_config_file={tmp_path / 'missing.config'}")
    assert "missing.config" in out.stderr


def test_what_oxserve_cannot_honour_in_a_config_is_refused(tmp_path):
    # TF Serving would log requests (logging_config) or hand the config to a custom loader: refused
    # by name rather than silently ignored.
    logging = tmp_path / "logging.config"
    logging.write_text(f'model_config_list {{ config {{ name: "a" base_path: "{HALF_PLUS_TWO}" '
                       'logging_config { sampling_config { sampling_rate: 0.5 } } } }\n')
    out = serve_cli(f"--model_config_file={logging}")
    assert "logging_config of model a: request logging is not supported" in out.stderr, out.stderr
    custom = tmp_path / "custom.config"
    custom.write_text("custom_model_config { }\n")
    out = serve_cli(f"--model_config_file={custom}")
    assert "custom_model_config is not supported" in out.stderr, out.stderr


def test_deprecated_model_type_is_checked_as_tf_serving_checks_it(tmp_path, launched):
    both = tmp_path / "both.config"
    both.write_text(f'model_config_list {{ config {{ name: "a" base_path: "{HALF_PLUS_TWO}" '
                    'model_type: TENSORFLOW model_platform: "tensorflow" } }\n')
    out = serve_cli(f"--model_config_file={both}")
    assert "Illegal setting both ModelServerConfig::model_type (deprecated) and " \
           "ModelServerConfig::model_platform." in out.stderr, out.stderr
    unknown = tmp_path / "unknown.config"
    unknown.write_text(f'model_config_list {{ config {{ name: "a" base_path: "{HALF_PLUS_TWO}" model_type: 7 }} }}\n')
    out = serve_cli(f"--model_config_file={unknown}")
    assert "ModelServerConfig::model_type choice 7 not supported." in out.stderr, out.stderr
    alone = tmp_path / "alone.config"
    # A comment in Latin-1 is read, as protobuf's tokenizer reads it.
    alone.write_bytes(b"# mod\xe8le\n" + f'model_config_list {{ config {{ name: "a" base_path: "{HALF_PLUS_TWO}" '
                      'model_type: TENSORFLOW } }\n'.encode())
    server = launched(f"--model_config_file={alone}")
    assert prediction(server, "a", 1.0) == 2.5
    assert "Deprecated ModelServerConfig::model_type field used" in server.log()


def test_a_specific_policy_without_versions_serves_none(tmp_path, launched):
    config = write_config(tmp_path / "models.config", {"name": "none", "base_path": HALF_PLUS_TWO, "policy": "specific { }"},
                          {"name": "two", "base_path": HALF_PLUS_TWO})
    server = launched(f"--model_config_file={config}", ready_path="/v1/models/two")
    assert prediction(server, "two", 1.0) == 2.5
    assert predict(server, "none", 1.0).status_code == 404
    assert "model_version_policy of model none is `specific` with no versions" in server.log()


def test_a_config_nested_too_deep_is_refused_and_the_server_keeps_serving(tmp_path, launched):
    config = write_config(tmp_path / "models.config", {"name": "two", "base_path": HALF_PLUS_TWO})
    server = launched(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    deep = "custom_model_config { [type.googleapis.com/tensorflow.serving.ModelServerConfig] { " * 2000 + "} }" * 2000
    tmp = config.with_suffix(".tmp")
    tmp.write_text(deep)
    os.replace(tmp, config)
    wait_for("the error logged", lambda: "messages nested deeper than 100 levels" in server.log())
    assert server.alive()
    assert prediction(server, "two", 1.0) == 2.5


def test_the_monitoring_config_is_not_read_without_a_rest_port(tmp_path):
    broken = tmp_path / "monitoring.config"
    broken.write_text("prometheus_config { enable: ")
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN), "serve", f"--port={free_port()}", "--model_name=m",
                                 f"--model_base_path={HALF_PLUS_TWO}", f"--monitoring_config_file={broken}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("gRPC serving", lambda: "Running gRPC ModelServer" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        assert "--monitoring_config_file is not read" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_model_name_and_base_path_are_ignored_next_to_a_config_file(tmp_path, launched):
    config = write_config(tmp_path / "models.config", {"name": "three", "base_path": HALF_PLUS_THREE})
    server = launched(f"--model_config_file={config}", "--model_name=two", f"--model_base_path={HALF_PLUS_TWO}")
    assert prediction(server, "three", 1.0) == 3.5
    assert predict(server, "two", 1.0).status_code == 404
    assert [m["name"] for m in server.get("/v1/models").json()["models"]] == ["three"]
    assert "--model_base_path and --model_name are ignored: --model_config_file is set" in server.log()


def test_version_policies(tmp_path, launched):
    config = write_config(
        tmp_path / "models.config",
        {"name": "latest", "base_path": TWO_VERSIONS},
        {"name": "all", "base_path": TWO_VERSIONS, "policy": "all {}"},
        {"name": "specific", "base_path": TWO_VERSIONS, "policy": "specific { versions: 123 }"},
        {"name": "latest2", "base_path": TWO_VERSIONS, "policy": "latest { num_versions: 2 }"},
    )
    server = launched(f"--model_config_file={config}")
    wait_for("every version of 'all' and 'latest2'", lambda: state_names(server, "all") == {
        124: "AVAILABLE", 123: "AVAILABLE"} and state_names(server, "latest2") == {124: "AVAILABLE", 123: "AVAILABLE"})
    assert state_names(server, "latest") == {124: "AVAILABLE"}
    assert state_names(server, "specific") == {123: "AVAILABLE"}
    # Latest resolves to the highest available version.
    metadata = server.get("/v1/models/specific/metadata").json()
    assert metadata["model_spec"]["version"] == "123"
    assert server.get("/v1/models/all/metadata").json()["model_spec"]["version"] == "124"
    for version in (123, 124):
        assert prediction(server, "all", 2.0, f"/versions/{version}") == 3.0
    missing = predict(server, "latest", 2.0, "/versions/123")
    assert missing.status_code == 404
    assert missing.json()["error"] == "Servable not found for request: Specific(latest, 123)"


# ---- version labels


def test_labels_over_rest(tmp_path, launched):
    config = write_config(
        tmp_path / "models.config",
        {"name": "m", "base_path": TWO_VERSIONS, "policy": "all {}", "labels": {"stable": 123, "canary": 124}},
    )
    # TF Serving's rule: at start nothing is available yet, so labels need the flag...
    out = serve_cli(f"--model_config_file={config}")
    # (Labels are checked in name order: "canary" first.)
    assert (
        "Request to assign label to version 124 of model m, which is not currently available for inference"
        in out.stderr
    )
    # ...with which new labels may point at versions still loading.
    server = launched(
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        "--model_config_file_poll_wait_seconds=1",
    )
    wait_for("both versions", lambda: state_names(server, "m") == {124: "AVAILABLE", 123: "AVAILABLE"})
    assert server.get("/v1/models/m/labels/stable/metadata").json()["model_spec"]["version"] == "123"
    assert server.get("/v1/models/m/labels/canary/metadata").json()["model_spec"]["version"] == "124"
    assert prediction(server, "m", 1.0, "/labels/stable") == 2.5
    assert prediction(server, "m", 1.0, "/labels/canary") == 2.5
    # Status takes no label into account, as TF Serving's (and the gRPC call): every version,
    # whatever the label, even one that does not exist.
    for label in ("stable", "nope"):
        statuses = server.get(f"/v1/models/m/labels/{label}").json()["model_version_status"]
        assert [s["version"] for s in statuses] == ["124", "123"]
    unknown = predict(server, "m", 1.0, "/labels/nope")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "Unrecognized servable version label: nope"
    assert server.get("/v1/models").json()["models"][0]["version_labels"] == {"canary": "124", "stable": "123"}

    # A reload that moves a label to an available version applies...
    write_config(config, {"name": "m", "base_path": TWO_VERSIONS, "policy": "all {}",
                          "labels": {"stable": 124, "canary": 124}})
    wait_for("stable moved", lambda: server.get("/v1/models/m/labels/stable/metadata").json()
             .get("model_spec", {}).get("version") == "124")
    # ...one that moves it to a version that is not available is refused whole (even with the
    # flag), and the labels stay.
    write_config(config, {"name": "m", "base_path": TWO_VERSIONS, "policy": "specific { versions: 123 }",
                          "labels": {"stable": 7, "canary": 124}})
    wait_for("the refusal logged", lambda: "Request to assign label to version 7 of model m" in server.log())
    assert server.get("/v1/models/m/labels/stable/metadata").json()["model_spec"]["version"] == "124"
    assert state_names(server, "m") == {124: "AVAILABLE", 123: "AVAILABLE"}


# ---- config reload


def test_config_reload_by_polling_replaces_the_model_set(tmp_path, launched):
    config = write_config(tmp_path / "models.config", {"name": "two", "base_path": HALF_PLUS_TWO})
    server = launched(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    assert prediction(server, "two", 1.0) == 2.5
    assert predict(server, "three", 1.0).status_code == 404

    write_config(config, {"name": "three", "base_path": HALF_PLUS_THREE})
    wait_for("three added", lambda: predict(server, "three", 1.0).status_code == 200)
    assert prediction(server, "three", 1.0) == 3.5
    wait_for("two removed", lambda: predict(server, "two", 1.0).status_code == 404)
    removed = predict(server, "two", 1.0)
    assert removed.json()["error"] == "Servable not found for request: Latest(two)"
    # Its status keeps the END state (as in TF Serving); the listing drops it.
    wait_for("two unloaded", lambda: state_names(server, "two") == {123: "END"})
    assert [m["name"] for m in server.get("/v1/models").json()["models"]] == ["three"]

    # A broken config is logged and changes nothing.
    config.write_text("model_config_list { config { name: ")
    wait_for("the error logged", lambda: f"{config}:1:" in server.log())
    assert prediction(server, "three", 1.0) == 3.5
    # The same model under a new base path serves its versions (TF Serving identifies versions by
    # model name and number: a version already loaded is not loaded again from the new path).
    write_config(config, {"name": "three", "base_path": TWO_VERSIONS})
    wait_for("three re-pointed", lambda: prediction(server, "three", 1.0) == 2.5)
    wait_for("old version unloaded", lambda: state_names(server, "three") == {124: "AVAILABLE", 123: "END"})
    # An empty file is said once and changes nothing, as in TF Serving.
    config.write_text("")
    wait_for("the empty file noted", lambda: "taking no action for empty config" in server.log())
    time.sleep(2.5)
    assert server.log().count("taking no action for empty config") == 1
    assert prediction(server, "three", 1.0) == 2.5


def test_without_a_poll_interval_the_config_file_is_read_once(tmp_path, launched):
    config = write_config(tmp_path / "models.config", {"name": "two", "base_path": HALF_PLUS_TWO})
    once = launched(f"--model_config_file={config}")
    # A polling server on the same file is the clock: once it has reloaded, so would have the other.
    polling = launched(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1")
    write_config(config, {"name": "three", "base_path": HALF_PLUS_THREE})
    wait_for("the polling server reloaded", lambda: predict(polling, "three", 1.0).status_code == 200)
    assert prediction(once, "two", 1.0) == 2.5
    assert predict(once, "three", 1.0).status_code == 404


# ---- versions appearing on disk


class Client(threading.Thread):
    """Sends predictions continuously; records every answer and every failure."""

    def __init__(self, server, model):
        super().__init__(daemon=True)
        self.server, self.model = server, model
        self.answers, self.failures = [], []
        self.running = threading.Event()
        self.running.set()

    def run(self):
        session = requests.Session()
        url = self.server.url(f"/v1/models/{self.model}:predict")
        while self.running.is_set():
            try:
                response = session.post(url, data='{"instances": [1.0]}', timeout=60)
                if response.status_code == 200:
                    self.answers.append(response.json()["predictions"][0])
                else:
                    self.failures.append(response.text)
            except requests.RequestException as err:
                self.failures.append(repr(err))

    def stop(self):
        self.running.clear()
        self.join(timeout=60)


def test_new_version_copied_file_by_file_under_load(tmp_path, launched):
    base = tmp_path / "model"
    base.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    server = launched("--model_name=m", f"--model_base_path={base}")
    client = Client(server, "m")
    client.start()
    try:
        wait_for("first answers", lambda: len(client.answers) >= 20)
        # half_plus_three arrives as version 2, one file at a time, the graph first.
        src = HALF_PLUS_THREE / "00000123"
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name != "saved_model.pb")
        for relative in files:
            target = base / "2" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / relative, target)
            time.sleep(0.3)
        wait_for("answers from version 2", lambda: client.answers and client.answers[-1] == 3.5)
        switched = len(client.answers)
        wait_for("more answers", lambda: len(client.answers) >= switched + 20)
    finally:
        client.stop()
    assert client.failures == []
    # Version 1 answered until version 2 was available, version 2 only after.
    first_new = client.answers.index(3.5)
    assert set(client.answers[:first_new]) == {2.5}
    assert set(client.answers[first_new:]) == {3.5}
    wait_for("version 1 unloaded", lambda: state_names(server, "m") == {2: "AVAILABLE", 1: "END"})
    # Never loaded half-copied: no failed attempt.
    assert "Loading servable: {name: m version: 2} failed" not in server.log()


def test_a_copy_that_pauses_before_the_variables_is_not_served(tmp_path, launched):
    """The graph of version 2 arrives, then nothing for longer than the directory takes to settle:
    TensorFlow would load it without variables and fail every request. It is refused; version 1
    keeps serving, and version 2 loads once its variables arrive."""
    base = tmp_path / "model"
    base.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    server = launched("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    staging = copy_version(HALF_PLUS_THREE / "00000123", tmp_path, "staging")
    os.rename(staging / "variables", tmp_path / "variables")
    os.rename(staging, base / "2")
    failed = wait_for("version 2 refused", lambda: states(server, "m").get(2, ("",))[0] == "END"
                      and states(server, "m")[2])
    assert "variables.index is missing" in failed[2], failed
    assert prediction(server, "m", 1.0) == 2.5
    os.rename(tmp_path / "variables", base / "2" / "variables")
    wait_for("version 2 loaded", lambda: prediction(server, "m", 1.0) == 3.5)


def test_corrupt_version_next_to_a_good_one(tmp_path, launched):
    base = tmp_path / "model"
    base.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    server = launched("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    client = Client(server, "m")
    client.start()
    try:
        wait_for("first answers", lambda: len(client.answers) >= 10)
        # Prepared aside and moved in whole, so that it is never seen uncorrupted.
        staging = copy_version(HALF_PLUS_THREE / "00000123", tmp_path, "staging")
        (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        corrupt = base / "2"
        os.rename(staging, corrupt)
        failed = wait_for("version 2 failed", lambda: states(server, "m").get(2, ("",))[0] == "END"
                          and states(server, "m")[2])
        count = len(client.answers)
        wait_for("more answers", lambda: len(client.answers) >= count + 10)
    finally:
        client.stop()
    assert client.failures == []
    assert set(client.answers) == {2.5}
    _, code, message = failed
    assert code != "OK"
    # The loader's own error, as TF Serving's status reports it (the log names the servable).
    assert message.startswith(f"Can't parse {corrupt}/saved_model.pb"), message
    assert states(server, "m")[1][0] == "AVAILABLE"
    # Beyond TF Serving: fixing the directory retries the load at once (retries were used up).
    shutil.copyfile(HALF_PLUS_THREE / "00000123" / "saved_model.pb", corrupt / "saved_model.pb")
    wait_for("version 2 loaded", lambda: prediction(server, "m", 1.0) == 3.5)
    wait_for("version 1 unloaded", lambda: state_names(server, "m") == {2: "AVAILABLE", 1: "END"})


@pytest.mark.parametrize("damage, message", [
    ("empty saved_model.pb", "saved_model.pb is empty: not a SavedModel"),
    ("truncated saved_model.pb", "(loading the SavedModel in {version})"),
    ("empty variables data", "(loading the SavedModel in {version})"),
])
def test_a_damaged_savedmodel_is_named_in_the_load_error(tmp_path, damage, message):
    # TensorFlow's own messages ("Read less bytes than requested", "Could not find meta graph
    # def matching supplied tags") name no file; the operator needs to know which one.
    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    if damage == "empty variables data":
        target = version / "variables" / "variables.data-00000-of-00001"
        target.write_bytes(b"")
    else:
        target = version / "saved_model.pb"
        target.write_bytes(b"" if damage.startswith("empty") else target.read_bytes()[:200])
    out = serve_cli("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    failed = [line for line in out.stderr.splitlines() if "Loading servable: {name: m version: 1} failed" in line]
    assert failed and message.format(version=version) in failed[0], out.stderr


def test_a_signature_naming_a_missing_tensor_is_logged_at_load(tmp_path, launched):
    # TF Serving loads such a model and fails the signature's requests; the operator should
    # not learn it from clients' 400s.
    from tensorflow.core.protobuf import saved_model_pb2

    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    model = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    model.meta_graphs[0].signature_def["regress_x_to_y"].outputs["outputs"].name = "nope:0"
    (version / "saved_model.pb").write_bytes(model.SerializeToString())
    server = launched("--model_name=m", f"--model_base_path={base}")
    assert prediction(server, "m", 1.0) == 2.5
    warning = [line for line in server.log().splitlines() if "names a tensor the graph lacks" in line]
    assert len(warning) == 1 and "regress_x_to_y" in warning[0] and "nope:0" in warning[0], server.log()


def test_a_model_without_versions_starts_unready_and_loads_when_one_appears(tmp_path, launched):
    base = tmp_path / "empty"
    base.mkdir()
    server = launched("--model_name=m", f"--model_base_path={base}", ready_path="/v1/health/live")
    assert server.get("/v1/health/live").json() == {"live": True}
    ready = server.get(READY)
    assert ready.status_code == 503
    assert ready.json()["unavailable_models"] == ["m"]
    assert "No versions of servable m found under base path" in server.log()
    status = server.get("/v1/models/m")
    assert status.status_code == 404
    assert status.json()["error"] == "Could not find any versions of model m"
    assert predict(server, "m", 1.0).status_code == 404
    copy_version(HALF_PLUS_TWO / "00000123", base, 5)
    wait_for("ready", lambda: server.get(READY).status_code == 200)
    assert server.get(READY).json() == {"ready": True}
    assert prediction(server, "m", 1.0) == 2.5


def test_without_polling_the_base_path_is_scanned_once(tmp_path, launched):
    base = tmp_path / "model"
    base.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    once = launched("--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0")
    negative = launched("--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=-1")
    # The default (1 s) is the clock: once it has swapped in version 2, a server that polled would
    # have seen it too.
    polling = launched("--model_name=m", f"--model_base_path={base}")
    copy_version(HALF_PLUS_THREE / "00000123", base, 2)
    wait_for("version 2 swapped in", lambda: state_names(polling, "m") == {2: "AVAILABLE", 1: "END"})
    for server in (once, negative):
        assert state_names(server, "m") == {1: "AVAILABLE"}
        assert prediction(server, "m", 1.0) == 2.5


def test_a_base_path_that_becomes_empty_keeps_its_version_serving(tmp_path, launched):
    # TF Serving unloads every version then; oxserve keeps the last one it has.
    base = tmp_path / "model"
    base.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    server = launched("--model_name=m", f"--model_base_path={base}")
    shutil.rmtree(base / "1")
    wait_for("the empty scan logged", lambda: "No versions of servable m found under base path" in server.log())
    assert prediction(server, "m", 1.0) == 2.5
    assert state_names(server, "m") == {1: "AVAILABLE"}
    assert server.get(READY).json() == {"ready": True}


def test_load_retries_are_counted_and_spaced_by_the_flags(tmp_path, launched):
    attempts = "Loading servable version {name: default version: 123}"
    out = serve_cli(f"--model_base_path={BAD_MODEL}", "--max_num_load_retries=2", "--load_retry_interval_micros=0")
    assert out.stderr.count(attempts) == 3, out.stderr
    # While waiting for its next retry a version is LOADING, with the last error in its status.
    base = tmp_path / "model"
    base.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    server = launched("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=1",
                      "--load_retry_interval_micros=3600000000")
    staging = copy_version(HALF_PLUS_THREE / "00000123", tmp_path, "staging")
    (staging / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    os.rename(staging, base / "2")

    def failed_once():
        status = states(server, "m").get(2)
        return status if status and status[1] != "OK" else None

    state, code, message = wait_for("version 2 failed once", failed_once)
    assert state == "LOADING"
    assert code != "OK"
    assert message.startswith(f"Can't parse {base / '2'}/saved_model.pb"), message
    assert server.log().count("Loading servable version {name: m version: 2}") == 1
    assert prediction(server, "m", 1.0) == 2.5


# ---- warm-up


def warmup_records():
    import tensorflow as tf
    from tensorflow_serving.apis import (classification_pb2, inference_pb2, predict_pb2,
                                         prediction_log_pb2, regression_pb2)

    def examples(input_message):
        for x in (1.0, 2.0):
            example = input_message.example_list.examples.add()
            example.features.feature["x"].float_list.value.append(x)

    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = "ignored"
    predict.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]], dtype=tf.float32))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = "classify_x_to_y"
    examples(classify.input)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.signature_name = "regress_x_to_y"
    examples(regress.input)
    # MultiInference checks that its tasks name one model (any name: warm-up runs on the version
    # being loaded).
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name, task.model_spec.signature_name = "ignored", "regress_x_to_y"
    task.method_name = "tensorflow/serving/regress"
    task = multi.tasks.add()
    task.model_spec.name, task.model_spec.signature_name = "ignored", "classify_x_to_y"
    task.method_name = "tensorflow/serving/classify"
    examples(multi.input)
    log = prediction_log_pb2
    return [
        log.PredictionLog(predict_log=log.PredictLog(request=predict)),
        log.PredictionLog(predict_log=log.PredictLog(request=predict)),
        log.PredictionLog(classify_log=log.ClassifyLog(request=classify)),
        log.PredictionLog(regress_log=log.RegressLog(request=regress)),
        log.PredictionLog(multi_inference_log=log.MultiInferenceLog(request=multi)),
    ]


def write_warmup(version_dir, records):
    import tensorflow as tf

    extra = version_dir / "assets.extra"
    extra.mkdir()
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record.SerializeToString())


def test_warmup_requests_are_replayed(tmp_path, launched):
    from tensorflow_serving.apis import prediction_log_pb2

    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    # Records of no type and streamed predict logs are skipped, as TF Serving skips them.
    empty, streamed = prediction_log_pb2.PredictionLog(), prediction_log_pb2.PredictionLog()
    streamed.predict_streamed_log.SetInParent()
    write_warmup(version, [empty, *warmup_records(), streamed])
    server = launched("--model_name=m", f"--model_base_path={base}", "--num_request_iterations_for_warmup=3",
                      f"--monitoring_config_file={MONITORING_CONFIG}")
    assert f"Finished reading warmup data for model at {version}/assets.extra/tf_serving_warmup_requests. " \
           "Number of warmup records read: 7." in server.log()
    families = metric_families(server)
    # Replayed before any request: 2 predict records x 3 iterations, 1 classify, 1 regress and
    # 1 multi-inference record (its two tasks in one run, as TF Serving runs them) x 3.
    runtime = ":tensorflow:serving:runtime_latency"
    assert metric(families, runtime, runtime + "_count", model_name="m", API="Predict") == 6
    for api in ("Classify", "Regress", "MultiInference"):
        assert metric(families, runtime, runtime + "_count", model_name="m", API=api) == 3, api
    warmup = ":tensorflow:serving:model_warmup_latency"
    assert metric(families, warmup, warmup + "_count", model_path=str(version), status="OK") == 1
    assert metric(families, ":tensorflow:serving:request_count", model_name="m") is None


def test_a_failing_warmup_fails_the_load(tmp_path):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    bad = predict_pb2.PredictRequest()
    bad.inputs["nope"].dtype = 1
    write_warmup(version, [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=bad))])
    out = serve_cli("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    assert "Warm-up record 1 of" in out.stderr and "nope" in out.stderr, out.stderr
    # A SessionService record is refused, as TF Serving refuses it.
    session_run = prediction_log_pb2.PredictionLog()
    session_run.session_run_log.SetInParent()
    (version / "assets.extra" / "tf_serving_warmup_requests").unlink()
    (version / "assets.extra").rmdir()
    write_warmup(version, [session_run])
    out = serve_cli("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    assert "Warm-up record 1 of" in out.stderr and "Unsupported log_type for warmup: session_run_log" in out.stderr
    # Without warm-up the same version loads.
    server = start(tmp_path, "--model_name=m", f"--model_base_path={base}", "--enable_model_warmup=false",
                   ready_path=READY)
    try:
        assert prediction(server, "m", 1.0) == 2.5
        assert "warmup data" not in server.log()
    finally:
        stop(server)


def test_warmup_latency_is_recorded_for_files_read_not_for_failing_records(tmp_path, launched):
    """TF Serving records a warm-up's time when its file reads to the end (OK) or stops reading
    (DATA_LOSS), not when a record fails to run."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    base, staging = tmp_path / "model", tmp_path / "staging"
    base.mkdir()
    staging.mkdir()
    copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    server = launched("--model_name=m", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1",
                      "--max_num_load_retries=0", f"--monitoring_config_file={MONITORING_CONFIG}")
    bad = predict_pb2.PredictRequest()
    bad.inputs["nope"].dtype = 1
    failing = copy_version(HALF_PLUS_TWO / "00000123", staging, 2)
    write_warmup(failing, [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=bad))])
    corrupt = copy_version(HALF_PLUS_TWO / "00000123", staging, 3)
    write_warmup(corrupt, warmup_records())
    path = corrupt / "assets.extra" / "tf_serving_warmup_requests"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    warmup = ":tensorflow:serving:model_warmup_latency"
    for version in (failing, corrupt):
        version.rename(base / version.name)
        number = int(version.name)
        wait_for(f"version {number} failing", lambda: states(server, "m").get(number, ("",))[0] == "END")
    families = metric_families(server)
    statuses = {s.labels["model_path"]: s.labels["status"] for s in families[warmup].samples}
    assert str(base / "2") not in statuses
    assert statuses[str(base / "3")].startswith("DATA_LOSS: corrupted record (data checksum mismatch)")
    assert prediction(server, "m", 1.0) == 2.5


def test_a_corrupt_warmup_file_is_named_in_the_load_error(tmp_path):
    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    write_warmup(version, warmup_records())
    path = version / "assets.extra" / "tf_serving_warmup_requests"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last record's data: its checksum no longer matches
    path.write_bytes(bytes(data))
    out = serve_cli("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    assert "corrupted record (data checksum mismatch) at offset" in out.stderr, out.stderr
    assert f"counting from 0) of {path}. Please verify your warmup data is in TFRecord format." in out.stderr


def test_a_version_that_cannot_all_be_read_loads_once_it_stays_so(tmp_path, launched):
    # Too deep to be read whole (as root, the test's way of a directory it may not read): TF
    # Serving loads it, and TensorFlow does not need it. It used to keep the server from starting.
    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    (version / "notes").joinpath(*["d"] * 40).mkdir(parents=True)
    server = launched("--model_name=m", f"--model_base_path={base}")
    assert server.post("/v1/models/m:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}
    assert "cannot all be read" in server.log()


def test_a_warmup_path_that_is_a_directory_fails_the_load(tmp_path):
    # TF Serving finds that it exists, then fails to read it.
    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    path = version / "assets.extra" / "tf_serving_warmup_requests"
    path.mkdir(parents=True)
    out = serve_cli("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    assert out.returncode != 0
    assert str(path) in out.stderr, out.stderr
    assert "No warmup data file found" not in out.stderr


def test_warmup_replays_each_record_once_and_reads_at_most_1000(tmp_path, launched):
    record = warmup_records()[0]
    base = tmp_path / "model"
    base.mkdir()
    version = copy_version(HALF_PLUS_TWO / "00000123", base, 1)
    write_warmup(version, [record] * 1000)
    server = launched("--model_name=m", f"--model_base_path={base}", f"--monitoring_config_file={MONITORING_CONFIG}")
    assert "Number of warmup records read: 1000." in server.log()
    # Each replayed once: --num_request_iterations_for_warmup defaults to 1.
    runtime = ":tensorflow:serving:runtime_latency"
    assert metric(metric_families(server), runtime, runtime + "_count", model_name="m", API="Predict") == 1000
    stop(server)
    shutil.rmtree(version / "assets.extra")
    write_warmup(version, [record] * 1001)
    out = serve_cli("--model_name=m", f"--model_base_path={base}", "--max_num_load_retries=0")
    assert f"Number of warmup records exceeds the maximum (1000) at {version}/assets.extra/tf_serving_warmup_requests" \
        in out.stderr, out.stderr


# ---- metrics


def test_prometheus_metrics_parse_with_tf_serving_names(tmp_path, launched):
    server = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}",
                      f"--monitoring_config_file={MONITORING_CONFIG}")
    assert prediction(server, "m", 1.0) == 2.5
    assert server.post("/v1/models/m:regress", {"signature_name": "regress_x_to_y",
                                                 "examples": [{"x": 1.0}, {"x": 2.0}]}).status_code == 200
    assert server.post("/v1/models/m:classify", {"signature_name": "classify_x_to_y",
                                                  "examples": [{"x": 1.0}]}).status_code == 200
    assert server.post("/v1/models/m:predict", {"instances": [[1.0]], "signature_name": "nope"}).status_code == 400
    # Refused by TensorFlow when it runs: a string fed to a float placeholder.
    assert server.post("/v1/models/m:predict", {"inputs": {"x": [["a"]]}}).status_code == 400
    families = metric_families(server)
    count = ":tensorflow:serving:request_count"
    assert families[count].type == "counter"
    assert metric(families, count, model_name="m", status="OK") == 3
    assert metric(families, count, model_name="m", status="INVALID_ARGUMENT") == 2
    # Only successes are timed, and REST's API label is the URL's verb (TF Serving's).
    latency = ":tensorflow:serving:request_latency"
    assert families[latency].type == "histogram"
    for api in ("predict", "regress", "classify"):
        assert metric(families, latency, latency + "_count", model_name="m", API=api, entrypoint="REST") == 1
    assert metric(families, latency, latency + "_bucket", model_name="m", API="predict", entrypoint="REST",
                  le="+Inf") == 1
    # Bucket bounds written as TF Serving writes them: six significant digits.
    for le in ("10", "32.4", "188.957", "1102", "1.27482e+06", "1.47476e+09"):
        assert metric(families, latency, latency + "_bucket", model_name="m", API="predict", entrypoint="REST",
                      le=le) is not None, le
    runtime = ":tensorflow:serving:runtime_latency"
    assert metric(families, runtime, runtime + "_count", model_name="m", API="Predict", runtime="TF1") == 1
    version_dir = str(HALF_PLUS_TWO / "00000123")
    assert metric(families, ":tensorflow:cc:saved_model:load_attempt_count", model_path=version_dir,
                  status="success") == 1
    assert metric(families, ":tensorflow:cc:saved_model:load_latency", model_path=version_dir) > 0
    # (prometheus_client files `<name>_total` counters under `<name>`.)
    assert metric(families, ":tensorflow:serving:request_example_count", model="m") == 3
    assert metric(families, ":oxserve:requests_in_flight", entrypoint="REST") == 0
    # gRPC calls are counted too, under their own entrypoint; GetModelMetadata and
    # MultiInference are not, as in TF Serving.
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (get_model_metadata_pb2, inference_pb2, predict_pb2,
                                         prediction_service_pb2_grpc)

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], dtype=tf.float32))
        stub.Predict(request, timeout=30)
        request.model_spec.signature_name = "nope"
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, timeout=30)
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = "m"
        stub.GetModelMetadata(metadata, timeout=30)
        multi = inference_pb2.MultiInferenceRequest()
        task = multi.tasks.add()
        task.model_spec.name = "m"
        task.model_spec.signature_name = "regress_x_to_y"
        task.method_name = "tensorflow/serving/regress"
        multi.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
        stub.MultiInference(multi, timeout=30)
    families = metric_families(server)
    assert metric(families, latency, latency + "_count", model_name="m", API="Predict", entrypoint="GRPC") == 1
    assert {s.labels["API"] for s in families[latency].samples} == {"predict", "regress", "classify", "Predict"}
    assert metric(families, count, model_name="m", status="OK") == 4
    assert metric(families, count, model_name="m", status="FAILED_PRECONDITION") == 1
    # The metrics path answers any method, as TF Serving's handler does.
    assert server.post(METRICS_PATH, {}).status_code == 200
    # Recorded latencies are folded into their buckets on a timer, not only when scraped: a
    # server nobody scrapes would otherwise hold every sample.
    assert "metrics-upkeep" in thread_names(server.proc.pid)
    # Without --monitoring_config_file the path is not served.
    other = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}")
    assert other.get(METRICS_PATH).status_code == 404
    assert "metrics-upkeep" not in thread_names(other.proc.pid)


def test_grpc_calls_ended_by_their_deadline_are_counted(tmp_path, launched):
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base = tmp_path / "busy"
    save_busy_model(base)
    server = launched("--model_name=busy", f"--model_base_path={base}",
                      f"--monitoring_config_file={MONITORING_CONFIG}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "busy"
    request.inputs["seconds"].CopyFrom(tf.make_tensor_proto(np.array([5.0], dtype=np.float64)))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as expired:
                stub.Predict(request, timeout=0.5)
            assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The client gives up at its deadline; the server counts the call when its own deadline ends
    # it, which may come a moment later.
    count = ":tensorflow:serving:request_count"
    wait_for("both calls counted", lambda: metric(
        metric_families(server), count, model_name="busy", status="DEADLINE_EXCEEDED") == 2, timeout=30)
    families = metric_families(server)
    latency = ":tensorflow:serving:request_latency"
    assert metric(families, latency, latency + "_count", model_name="busy", API="Predict", entrypoint="GRPC") is None


def test_metrics_at_the_configured_path_with_example_counts(tmp_path, launched):
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/my/metrics" }\n')
    server = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}", f"--monitoring_config_file={config}")
    assert server.post("/v1/models/m:regress", {"signature_name": "regress_x_to_y",
                                                 "examples": [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]}).status_code == 200
    assert server.get(METRICS_PATH).status_code == 404
    response = server.get("/my/metrics")
    assert response.status_code == 200
    from prometheus_client.parser import text_string_to_metric_families

    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    # One request of 3 examples: TF Serving's per-request histogram, buckets 1, 2, 4, ...
    counts = ":tensorflow:serving:request_example_counts"
    assert families[counts].type == "histogram"
    assert metric(families, counts, counts + "_count", model="m") == 1
    assert metric(families, counts, counts + "_sum", model="m") == 3
    assert metric(families, counts, counts + "_bucket", model="m", le="2") == 0
    assert metric(families, counts, counts + "_bucket", model="m", le="4") == 1


# ---- shutdown


def held_body(release, rest):
    """A request body sent in two parts, the second once `release` is set."""
    yield b'{"instances": ['
    release.wait(120)
    yield rest


def test_sigterm_finishes_requests_in_flight(tmp_path, launched):
    server = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}",
                      f"--monitoring_config_file={MONITORING_CONFIG}")
    release = threading.Event()
    results = {}

    def send(i):
        try:
            response = requests.post(server.url("/v1/models/m:predict"),
                                     data=held_body(release, b"1.0, 2.0, 5.0]}"), timeout=120)
            results[i] = (response.status_code, response.json())
        except Exception as err:  # noqa: BLE001 - recorded and asserted on below
            results[i] = repr(err)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    in_flight = ":oxserve:requests_in_flight"
    wait_for("4 requests in flight",
             lambda: metric(metric_families(server), in_flight, entrypoint="REST") == 4)
    server.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", server.rest_port), timeout=5).close()
            return False
        except OSError:
            return True

    # New connections are refused while the requests in flight keep the server running...
    wait_for("the listener closed", refused)
    assert server.alive()
    # ...and those requests complete.
    release.set()
    for thread in threads:
        thread.join(timeout=120)
    assert results == {i: (200, {"predictions": [2.5, 3.0, 4.5]}) for i in range(4)}
    assert server.proc.wait(timeout=60) == 0


@contextlib.contextmanager
def held_request(server):
    """A REST call whose body stops halfway, in flight until the block ends; yields its outcome
    ("response", or "error" if the connection was cut)."""
    release = threading.Event()
    outcome = {}

    def send():
        try:
            outcome["response"] = requests.post(server.url("/v1/models/m:predict"),
                                                data=held_body(release, b"1.0]}"), timeout=120)
        except requests.RequestException as err:
            outcome["error"] = err

    thread = threading.Thread(target=send)
    thread.start()
    try:
        wait_for("the request in flight",
                 lambda: metric(metric_families(server), ":oxserve:requests_in_flight", entrypoint="REST") == 1)
        yield outcome
    finally:
        release.set()
        thread.join(timeout=120)


def test_shutdown_waits_for_requests_only_as_long_as_the_rest_timeout(tmp_path, launched):
    # A client that never finishes sending its body must not keep the process alive: after the
    # signal, calls in flight get --rest_api_timeout_in_ms to finish, then their connections close.
    server = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}",
                      f"--monitoring_config_file={MONITORING_CONFIG}", "--rest_api_timeout_in_ms=1000")
    with held_request(server) as outcome:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
    assert "connections still open 1000 ms after the shutdown signal: closing them" in server.log()
    assert "error" in outcome, outcome


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT),
                                           (signal.SIGTERM, signal.SIGINT)])
def test_a_second_signal_exits_without_waiting(tmp_path, launched, first, second):
    # The drain may last --rest_api_timeout_in_ms (30 s by default): an operator's second Ctrl-C
    # or SIGTERM ends the process at once, with the status of a process killed by that signal,
    # and removes the gRPC socket file as an orderly shutdown does.
    sock = tmp_path / "grpc.sock"
    server = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}",
                      f"--monitoring_config_file={MONITORING_CONFIG}", f"--grpc_socket_path={sock}")
    assert sock.is_socket()
    with held_request(server) as outcome:
        server.proc.send_signal(first)
        wait_for("the drain to begin", lambda: "a second signal exits at once" in server.log())
        assert server.alive()
        server.proc.send_signal(second)
        assert server.proc.wait(timeout=10) == 128 + second
    assert not sock.exists()
    assert "second shutdown signal: exiting without waiting for in-flight requests" in server.log()
    assert "error" in outcome, outcome  # the held call was cut off, not answered


def test_sigint_stops_gracefully_too(tmp_path, launched):
    server = launched("--model_name=m", f"--model_base_path={HALF_PLUS_TWO}")
    assert prediction(server, "m", 1.0) == 2.5
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=60) == 0
    assert "shutting down: finishing in-flight requests" in server.log()
