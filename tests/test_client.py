"""`oxserve client` against a running oxserve, over REST and over gRPC: status, metadata, predict
with instances, request files and the demo JPEG files; clear errors; gRPC over TLS (with and without
client certificates) and over the `--grpc_socket_path` Unix socket, plain and with TLS."""

import base64
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import (
    BIN, DEMO, HALF_PLUS_THREE, HALF_PLUS_TWO, expected_outputs, free_port, key_and_cert, pem, run_cli, running, ssl_config_file,
    wait_for,
)

JPEG_FILES = sorted((DEMO / "inputs").glob("*.jpg"))


@pytest.fixture(scope="module")
def jpeg(serve):
    return serve("jpeg_classifier", DEMO / "jpeg_classifier")


@pytest.fixture(scope="module")
def planet(serve):
    return serve("planet", DEMO / "planet")


@pytest.fixture(scope="module")
def hpt(serve, tmp_path_factory):
    path = tmp_path_factory.mktemp("socket") / "grpc.sock"
    server = serve("half_plus_two", HALF_PLUS_TWO, f"--grpc_socket_path={path}")
    server.socket = path
    return server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory, pki):
    """The test PKI as files for the client's --ssl_* flags, and a CA that signed nothing here."""
    d = tmp_path_factory.mktemp("tls")
    files = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key", "other_ca": d / "other_ca.pem"}
    files["ca"].write_bytes(pki["ca"])
    files["key"].write_bytes(pki["client"][0])
    files["cert"].write_bytes(pki["client"][1])
    other_key, other_ca = key_and_cert("another CA", ca=True)
    files["other_ca"].write_bytes(pem(other_ca))
    files["other_key"] = d / "other.key"
    files["other_key"].write_bytes(pem(other_key))
    return files


@pytest.fixture(scope="module")
def tls_hpt(serve, tmp_path_factory, pki):
    """half_plus_two with TLS on its gRPC port and its Unix socket."""
    d = tmp_path_factory.mktemp("tls_hpt")
    server = serve(
        "half_plus_two",
        HALF_PLUS_TWO,
        f"--ssl_config_file={ssl_config_file(d, pki, client_verify=False)}",
        f"--grpc_socket_path={d / 'grpc.sock'}",
    )
    server.socket = d / "grpc.sock"
    return server


@pytest.fixture(scope="module")
def mtls_jpeg(serve, tmp_path_factory, pki):
    """jpeg_classifier with TLS that requires client certificates (client_verify)."""
    d = tmp_path_factory.mktemp("mtls_jpeg")
    return serve(
        "jpeg_classifier", DEMO / "jpeg_classifier", f"--ssl_config_file={ssl_config_file(d, pki, client_verify=True)}"
    )


def client(server, *args, grpc=False):
    port = server.grpc_port if grpc else server.rest_port
    extra = ["--grpc"] if grpc else []
    return run_cli("client", *args[:1], "--server", f"127.0.0.1:{port}", *extra, *args[1:])


def client_json(server, *args, grpc=False):
    out = client(server, *args, grpc=grpc)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_status_and_metadata(jpeg, grpc):
    status = client_json(jpeg, "status", "--model", "jpeg_classifier", grpc=grpc)
    assert status == jpeg.get("/v1/models/jpeg_classifier").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = client_json(jpeg, "metadata", "--model", "jpeg_classifier", "--version", "1", grpc=grpc)
    assert metadata == jpeg.get("/v1/models/jpeg_classifier/versions/1/metadata").json()
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["image_bytes"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_predict_instances_and_request_files(hpt, tmp_path, grpc):
    got = client_json(hpt, "predict", "--model", "half_plus_two", "--instances", "[[1.0], [2.0], [5.0]]", grpc=grpc)
    assert got == {"predictions": [[2.5], [3.0], [4.5]]}
    # A REST body from a file, columnar, with a signature named by flag.
    body = {"inputs": {"inputs": [[1.0], [3.0]]}}
    (tmp_path / "request.json").write_text(json.dumps(body))
    got = client_json(
        hpt, "predict", "--model", "half_plus_two", "--json", tmp_path / "request.json",
        "--signature", "regress_x2_to_y3", grpc=grpc,
    )
    want = hpt.post("/v1/models/half_plus_two:predict", {**body, "signature_name": "regress_x2_to_y3"}).json()
    assert got == want == {"outputs": [[3.5], [4.5]]}


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_jpeg_files_to_a_string_input(jpeg, grpc):
    got = client_json(jpeg, "predict", "--model", "jpeg_classifier", "--image", *JPEG_FILES, grpc=grpc)
    instances = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in JPEG_FILES]
    want = jpeg.post("/v1/models/jpeg_classifier:predict", {"instances": instances}).json()
    assert got == want
    out = client(jpeg, "predict", "--model", "jpeg_classifier", "--image", *JPEG_FILES, "--top_k", "2", grpc=grpc)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 * len(JPEG_FILES)
    for i, path in enumerate(JPEG_FILES):
        assert lines[2 * i] == f"{path}:"
        row = want["predictions"][i]
        ranked = sorted(zip(row["classes"], row["scores"]), key=lambda p: -p[1])[:2]
        assert lines[2 * i + 1] == "  classes/scores: " + ", ".join(f"{c} {s:.6f}" for c, s in ranked)


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_images_to_a_float_input_are_decoded_resized_and_scaled(planet, tmp_path, grpc):
    from PIL import Image

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exact.png")  # lossless, already 128x128: no resize
    got = client_json(planet, "predict", "--model", "planet", "--image", tmp_path / "exact.png", grpc=grpc)
    floats = (pixels.astype(np.float32) / np.float32(255)).tolist()
    want = planet.post("/v1/models/planet:predict", {"instances": [floats]}).json()
    for alias in ("weather", "ground"):
        assert np.max(np.abs(np.subtract(got["predictions"][0][alias], want["predictions"][0][alias]))) <= 1e-5
    # The demo JPEGs (64x48, 96x120, gray 40x40) are resized to 128x128 RGB.
    got = client_json(planet, "predict", "--model", "planet", "--image", *JPEG_FILES, "--image_range", "-1,1", grpc=grpc)
    assert len(got["predictions"]) == 3
    for row in got["predictions"]:
        assert abs(sum(row["weather"]) - 1) < 1e-5 and len(row["ground"]) == 13
    out = client(planet, "predict", "--model", "planet", "--image", *JPEG_FILES, "--top_k", "1", grpc=grpc)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("  weather: #") == 3 and out.stdout.count("  ground: #") == 3


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_clear_errors(planet, tmp_path, grpc):
    port = free_port()
    extra = ["--grpc"] if grpc else []
    out = run_cli("client", "status", "--server", f"127.0.0.1:{port}", "--model", "planet", *extra)
    assert out.returncode != 0 and "cannot reach" in out.stderr and "Connection refused" in out.stderr
    assert ("is this its gRPC --port?" if grpc else "is this its --rest_api_port?") in out.stderr
    out = client(planet, "status", "--model", "nope", grpc=grpc)
    assert out.returncode != 0
    assert "Could not find any versions of model nope" in out.stderr
    assert ("404" if not grpc else "NOT_FOUND") in out.stderr
    out = client(planet, "predict", "--model", "planet", "--instances", "[[1, 2]]", grpc=grpc)
    assert out.returncode != 0 and "4-dimensional" in out.stderr
    out = client(planet, "predict", "--model", "planet", "--image", tmp_path / "missing.jpg", grpc=grpc)
    assert out.returncode != 0 and "missing.jpg" in out.stderr
    (tmp_path / "not-an-image.jpg").write_text("hello")
    out = client(planet, "predict", "--model", "planet", "--image", tmp_path / "not-an-image.jpg", grpc=grpc)
    assert out.returncode != 0 and "cannot decode it as a JPEG or PNG" in out.stderr
    out = client(planet, "predict", "--model", "planet", "--version", "9", "--instances", "[1]", grpc=grpc)
    assert out.returncode != 0 and "Servable not found" in out.stderr
    # --instances is one JSON value: it cannot close the list and add members of its own.
    out = client(planet, "predict", "--model", "planet", "--instances", '[[1]], "signature_name": "x"', grpc=grpc)
    assert out.returncode != 0 and "--instances" in out.stderr and "offset: 5" in out.stderr, out.stderr
    assert "panicked" not in out.stderr


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_top_k_names_a_single_output_and_needs_k_of_one_or_more(hpt, tmp_path, grpc):
    """A single output's answer carries no name (bare rows, bare "outputs"): the label is the
    signature's output, from the model's metadata, not a made-up "output"."""
    out = client(hpt, "predict", "--model", "half_plus_two", "--instances", "[[1.0], [5.0]]", "--top_k", "1", grpc=grpc)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["instance 0:", "  y: #0 2.500000", "instance 1:", "  y: #0 4.500000"]
    # The signature a request body names, columnar.
    (tmp_path / "request.json").write_text(
        json.dumps({"signature_name": "regress_x2_to_y3", "inputs": {"inputs": [[1.0]]}})
    )
    out = client(hpt, "predict", "--model", "half_plus_two", "--json", tmp_path / "request.json", "--top_k", "1", grpc=grpc)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["instance 0:", "  outputs: #0 3.500000"]
    out = client(hpt, "predict", "--model", "half_plus_two", "--instances", "[[1.0]]", "--top_k", "0", grpc=grpc)
    assert out.returncode == 2 and "'0' for '--top_k <TOP_K>': it must be 1 or more" in out.stderr, out.stderr
    assert out.stdout == ""


def test_a_truncated_jpeg_is_refused(planet, tmp_path):
    """The JPEG decoder makes up the missing part of a file cut short: such a file is refused,
    not sent as an image it is not."""
    whole = JPEG_FILES[1].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    out = client(planet, "predict", "--model", "planet", "--image", JPEG_FILES[0], cut)
    assert out.returncode != 0
    assert f"--image {cut}: the JPEG is truncated" in out.stderr, out.stderr
    # Data after the end of the image is not the image's: still whole.
    (tmp_path / "trailer.jpg").write_bytes(whole + b"\0" * 16)
    out = client(planet, "predict", "--model", "planet", "--image", tmp_path / "trailer.jpg", "--top_k", "1")
    assert out.returncode == 0, out.stderr


def run_client(*args):
    out = run_cli("client", *args)
    assert "panicked" not in out.stderr
    return out


def run_json(*args):
    out = run_client(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_grpc_over_tls(tls_hpt, tls_files):
    ca = ["--ssl_ca", tls_files["ca"]]
    port = tls_hpt.grpc_port
    for server in (f"localhost:{port}", f"https://localhost:{port}"):
        status = run_json("status", "--server", server, "--grpc", *ca, "--model", "half_plus_two")
        assert status == tls_hpt.get("/v1/models/half_plus_two").json()
        metadata = run_json("metadata", "--server", server, "--grpc", *ca, "--model", "half_plus_two")
        assert metadata == tls_hpt.get("/v1/models/half_plus_two/metadata").json()
        got = run_json(
            "predict", "--server", server, "--grpc", *ca, "--model", "half_plus_two", "--instances", "[[1.0], [5.0]]"
        )
        assert got == {"predictions": [[2.5], [4.5]]}
    # The certificate is for localhost: another name for the same server is checked as that name
    # unless --ssl_target_name says which to expect.
    out = run_client("status", "--server", f"127.0.0.1:{port}", "--grpc", *ca, "--model", "half_plus_two")
    assert out.returncode != 0
    assert "TLS handshake" in out.stderr and 'not valid for name "127.0.0.1"' in out.stderr
    assert "--ssl_target_name" in out.stderr
    status = run_json(
        "status", "--server", f"127.0.0.1:{port}", "--grpc", *ca, "--ssl_target_name", "localhost",
        "--model", "half_plus_two",
    )
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_tls_errors_name_the_problem(tls_hpt, hpt, tls_files):
    port = tls_hpt.grpc_port
    status = ["--model", "half_plus_two"]
    out = run_client("status", "--server", f"localhost:{port}", "--grpc", "--ssl_ca", tls_files["other_ca"], *status)
    assert out.returncode != 0
    assert "TLS handshake with the gRPC server at https://localhost:" in out.stderr
    assert "UnknownIssuer" in out.stderr and "not signed by a certificate authority this client trusts" in out.stderr
    # A plain client at a TLS port, and a TLS client at a plain one.
    out = run_client("status", "--server", f"localhost:{port}", "--grpc", *status)
    assert out.returncode != 0 and "if the server uses TLS" in out.stderr
    out = run_client("status", "--server", f"localhost:{hpt.grpc_port}", "--grpc", "--ssl_ca", tls_files["ca"], *status)
    assert out.returncode != 0 and "does the server serve TLS at this address?" in out.stderr
    # REST over https speaks TLS (oxserve's REST port, as TF Serving's, is plain HTTP).
    out = run_client("status", "--server", f"https://localhost:{hpt.rest_port}", "--ssl_ca", tls_files["ca"], *status)
    assert out.returncode != 0
    assert "TLS connection to the REST server" in out.stderr and "does the server serve TLS" in out.stderr
    # Unusable flags.
    out = run_client("status", "--server", f"localhost:{port}", "--grpc", "--ssl_ca", tls_files["key"], *status)
    assert out.returncode != 0 and f"--ssl_ca {tls_files['key']}: no PEM certificate in it" in out.stderr
    missing = tls_files["ca"].with_name("nope")
    out = run_client("status", "--server", f"localhost:{port}", "--grpc", "--ssl_ca", missing, *status)
    assert out.returncode != 0 and "cannot read it" in out.stderr
    out = run_client("status", "--server", f"localhost:{port}", "--grpc", "--ssl_cert", tls_files["cert"], *status)
    assert out.returncode != 0 and "--ssl_key" in out.stderr
    out = run_client("status", "--server", f"http://localhost:{port}", "--grpc", "--ssl_ca", tls_files["ca"], *status)
    assert out.returncode != 0 and "is plain HTTP, but --ssl_* flags ask for TLS" in out.stderr
    out = run_client("status", "--server", f"localhost:{hpt.rest_port}", "--ssl_target_name", "localhost", *status)
    assert out.returncode != 0 and "--ssl_target_name is for gRPC" in out.stderr


def test_client_certificates(mtls_jpeg, tls_files):
    jpeg_files = JPEG_FILES[:1]
    flags = ["--server", f"localhost:{mtls_jpeg.grpc_port}", "--grpc", "--ssl_ca", tls_files["ca"]]
    mine = ["--ssl_cert", tls_files["cert"], "--ssl_key", tls_files["key"]]
    got = run_json("predict", *flags, *mine, "--model", "jpeg_classifier", "--image", *jpeg_files)
    instances = [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in jpeg_files]
    assert got == mtls_jpeg.post("/v1/models/jpeg_classifier:predict", {"instances": instances}).json()
    # Without a certificate the server hangs up after the handshake; whether the client reads its
    # alert (certificate required) first or only sees the connection closed is a race, so either
    # way the message says what to give.
    out = run_client("status", *flags, "--model", "jpeg_classifier")
    assert out.returncode != 0 and "--ssl_cert and --ssl_key" in out.stderr, out.stderr
    # A key that is not the certificate's.
    wrong_key = ["--ssl_cert", tls_files["cert"], "--ssl_key", tls_files["other_key"]]
    out = run_client("status", *flags, *wrong_key, "--model", "jpeg_classifier")
    assert out.returncode != 0 and "--ssl_cert and --ssl_key" in out.stderr


def test_unix_socket(hpt, tls_hpt, tls_files):
    status = ["--model", "half_plus_two"]
    got = run_json("predict", "--server", f"unix:{hpt.socket}", "--grpc", *status, "--instances", "[1.0, 3.0]")
    assert got == {"predictions": [2.5, 3.5]}
    assert run_json("status", "--server", f"unix://{hpt.socket}", "--grpc", *status) == hpt.get(
        "/v1/models/half_plus_two"
    ).json()
    out = run_client("status", "--server", f"unix:{hpt.socket}", *status)
    assert out.returncode != 0 and "a Unix socket serves gRPC only" in out.stderr and "add --grpc" in out.stderr
    out = run_client("status", "--server", f"unix:{hpt.socket}.missing", "--grpc", *status)
    assert out.returncode != 0 and "cannot reach" in out.stderr and "--grpc_socket_path" in out.stderr
    # With TLS the name to check the certificate against must be given: a socket has no host name.
    tls = ["--server", f"unix:{tls_hpt.socket}", "--grpc", "--ssl_ca", tls_files["ca"]]
    out = run_client("status", *tls, *status)
    assert out.returncode != 0 and "TLS over a Unix socket needs --ssl_target_name" in out.stderr
    got = run_json("predict", *tls, "--ssl_target_name", "localhost", *status, "--instances", "[[1.0]]")
    assert got == {"predictions": [[2.5]]}
    metadata = run_json("metadata", *tls, "--ssl_target_name", "localhost", *status)
    assert metadata == tls_hpt.get("/v1/models/half_plus_two/metadata").json()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A model whose version 1 is half_plus_two and version 2 half_plus_three, labelled stable
    and canary."""
    d = tmp_path_factory.mktemp("labelled")
    (d / "base").mkdir()
    (d / "base" / "1").symlink_to(HALF_PLUS_TWO / "00000123")
    (d / "base" / "2").symlink_to(HALF_PLUS_THREE / "00000123")
    (d / "models.config").write_text(
        'model_config_list { config { name: "m" base_path: "%s" model_platform: "tensorflow"\n'
        "  model_version_policy { all {} }\n"
        '  version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } } }\n' % (d / "base")
    )
    with running(
        d, f"--model_config_file={d / 'models.config'}", "--allow_version_labels_for_unavailable_models",
        ready_path="/v1/models/m",
    ) as server:
        # The REST port opens when the model is served, not necessarily at both versions.
        statuses = lambda: server.get("/v1/models/m").json()["model_version_status"]  # noqa: E731
        wait_for("both versions", lambda: sorted(s["version"] for s in statuses() if s["state"] == "AVAILABLE") == ["1", "2"])
        yield server


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_labels_pick_a_version(labelled, grpc):
    port = labelled.grpc_port if grpc else labelled.rest_port
    flags = ["--server", f"http://127.0.0.1:{port}", "--model", "m", *(["--grpc"] if grpc else [])]
    status = run_json("status", *flags, "--label", "canary")
    assert [s["version"] for s in status["model_version_status"]] == ["2"]
    metadata = run_json("metadata", *flags, "--label", "stable")
    assert metadata["model_spec"]["version"] == "1"
    assert run_json("predict", *flags, "--label", "stable", "--instances", "[1.0]") == {"predictions": [2.5]}
    assert run_json("predict", *flags, "--label", "canary", "--instances", "[1.0]") == {"predictions": [3.5]}
    out = run_client("status", *flags, "--label", "nope")
    assert out.returncode != 0 and "Unrecognized servable version label: nope" in out.stderr


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_the_readmes_demo_request_file(planet, grpc):
    got = client_json(planet, "predict", "--model", "planet", "--json", DEMO / "inputs" / "planet_request.json", grpc=grpc)
    want = expected_outputs()["models"]["planet"]["outputs"]
    for alias in ("weather", "ground"):
        rows = [row[alias] for row in got["predictions"]]
        assert np.max(np.abs(np.subtract(rows, want[alias]["value"][: len(rows)]))) <= 1e-5


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_request_body_from_stdin(hpt, grpc):
    port = hpt.grpc_port if grpc else hpt.rest_port
    args = ["client", "predict", "--server", f"127.0.0.1:{port}", "--model", "half_plus_two", "--json", "-"]
    out = subprocess.run(
        [str(BIN), *args, *(["--grpc"] if grpc else [])], input='{"instances": [[3.0]]}',
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"predictions": [[3.5]]}


@pytest.fixture(scope="module")
def pixels(serve, tmp_path_factory):
    """A model echoing 2x2 RGB images: uint8 in serving_default, float32 in "floats", float64 in
    "doubles"; "two" takes two inputs. "resized", "resized_gray" (one channel) and "resized_u8"
    echo 50x40 images. "bits" answers a float64 vector with its bits (int64)."""
    tf = tensorflow()

    def echo(dtype, shape=(2, 2, 3)):
        spec = tf.TensorSpec([None, *shape], dtype, name="image")
        return tf.function(lambda image: {"pixels": tf.identity(image)}, input_signature=[spec])

    two = tf.function(
        lambda a, b: {"sum": a + b},
        input_signature=[tf.TensorSpec([None, 2, 2, 3], tf.float32, name=n) for n in ("a", "b")],
    )
    bits = tf.function(
        lambda x: {"bits": tf.bitcast(x, tf.int64)}, input_signature=[tf.TensorSpec([None], tf.float64, name="x")]
    )
    module = tf.Module()
    module.u, module.f, module.d, module.two = echo(tf.uint8), echo(tf.float32), echo(tf.float64), two
    module.r, module.g = echo(tf.float32, (40, 50, 3)), echo(tf.float32, (40, 50, 1))
    module.ru, module.bits = echo(tf.uint8, (40, 50, 3)), bits
    path = tmp_path_factory.mktemp("pixels") / "echo"
    signatures = {
        "serving_default": module.u, "floats": module.f, "doubles": module.d, "two": two,
        "resized": module.r, "resized_gray": module.g, "resized_u8": module.ru, "bits": bits,
    }
    tf.saved_model.save(module, str(path / "1"), signatures=signatures)
    return serve("echo", path)


def tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    import tensorflow as tf

    return tf


def tf_resized(pixels, height, width):
    """What Keras users feed a model: tf.image.resize (bilinear, half-pixel centers) of the pixels
    as floats, not rounded back to bytes."""
    return tensorflow().image.resize(pixels.astype(np.float32), (height, width)).numpy()


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_resized_images_are_what_tf_image_resize_makes_of_them(pixels, planet, tmp_path, grpc):
    """Noise pixels, where every filter differs, of sizes that are not the input's: shrunk (97x61
    RGB) and grown (31x23 gray), to 3 channels and to 1."""
    from PIL import Image

    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, size=(61, 97, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, size=(23, 31), dtype=np.uint8)
    gray3 = np.repeat(gray[..., None], 3, axis=-1)  # decode_png(channels=3) of a gray PNG
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    files = [tmp_path / "rgb.png", tmp_path / "gray.png"]

    def echoed(signature, *args, files=files):
        got = client_json(pixels, "predict", "--model", "echo", "--signature", signature, "--image", *files, *args, grpc=grpc)
        return np.asarray(got["predictions"], dtype=np.float32)

    want = np.stack([tf_resized(rgb, 40, 50), tf_resized(gray3, 40, 50)])
    assert np.max(np.abs(echoed("resized") - want / np.float32(255))) <= 1e-6
    assert np.max(np.abs(echoed("resized", "--image_range", "-1,1") - (want / 127.5 - 1))) <= 1e-6
    want_gray = tf_resized(gray[..., None], 40, 50)
    assert np.max(np.abs(echoed("resized_gray")[1] - want_gray / np.float32(255))) <= 1e-6
    # Integer inputs: rounded as tf.round would, half to even. Doubling the size puts outputs a
    # quarter of the way between pixels: halves where neighbours differ by 2 (mod 4).
    assert np.array_equal(echoed("resized_u8"), np.round(want))
    half = rng.integers(0, 256, size=(20, 25, 3), dtype=np.uint8)
    Image.fromarray(half).save(tmp_path / "half.png")
    want = tf_resized(half, 40, 50)
    assert np.any(want % 1 == 0.5)
    assert np.array_equal(echoed("resized_u8", files=[tmp_path / "half.png"])[0], np.round(want))

    got = client_json(planet, "predict", "--model", "planet", "--image", *files, grpc=grpc)
    instances = [(tf_resized(p, 128, 128) / np.float32(255)).tolist() for p in (rgb, gray3)]
    want = planet.post("/v1/models/planet:predict", {"instances": instances}).json()
    for alias in ("weather", "ground"):
        rows = [row[alias] for row in got["predictions"]]
        assert np.max(np.abs(np.subtract(rows, [row[alias] for row in want["predictions"]]))) <= 1e-6


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_image_pixels_as_integers_and_scaled_floats(pixels, tmp_path, grpc):
    from PIL import Image

    rgb = np.array([[[0, 1, 2], [3, 4, 5]], [[250, 251, 252], [253, 254, 255]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "px.png")
    image = ["--model", "echo", "--image", tmp_path / "px.png"]
    assert client_json(pixels, "predict", *image, grpc=grpc) == {"predictions": [rgb.tolist()]}
    floats = ["--signature", "floats"]
    assert client_json(pixels, "predict", *image, *floats, "--image_range", "0,255", grpc=grpc) == {
        "predictions": [rgb.astype(float).tolist()]
    }
    got = client_json(pixels, "predict", *image, *floats, grpc=grpc)["predictions"][0]  # default 0,1
    assert np.max(np.abs(np.subtract(got, rgb / 255))) <= 1e-6
    got = client_json(pixels, "predict", *image, *floats, "--image_range", "-1,1", grpc=grpc)["predictions"][0]
    assert np.max(np.abs(np.subtract(got, rgb / 127.5 - 1))) <= 1e-6
    out = client(pixels, "predict", *image, "--signature", "two", grpc=grpc)
    assert out.returncode != 0 and "--image needs a signature with one input; two has 2 (a, b)" in out.stderr


@pytest.fixture(scope="module")
def https_rest(hpt, pki, tmp_path_factory):
    """A TLS 1.2 (at most) HTTPS front for hpt's REST port (oxserve's REST, as TF Serving's, is
    plain HTTP): the address of a REST server behind a TLS-terminating proxy."""
    import http.server
    import ssl
    import threading

    import requests

    d = tmp_path_factory.mktemp("https")
    (d / "key.pem").write_bytes(pki["server"][0])
    (d / "cert.pem").write_bytes(pki["server"][1])

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            upstream = requests.get(hpt.url(self.path), timeout=60)
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://localhost:{server.server_address[1]}"
    server.shutdown()


def test_rest_over_tls_and_the_system_roots(https_rest, hpt, tls_hpt, tls_files):
    status = ["--model", "half_plus_two"]
    want = hpt.get("/v1/models/half_plus_two").json()
    assert run_json("status", "--server", https_rest, "--ssl_ca", tls_files["ca"], *status) == want
    # Without --ssl_ca the system's roots are trusted, which SSL_CERT_FILE replaces.
    env = dict(os.environ, SSL_CERT_FILE=str(tls_files["ca"]))
    for server in (
        ["--server", https_rest],
        ["--server", f"https://localhost:{tls_hpt.grpc_port}", "--grpc"],
        # Any --ssl_* flag turns TLS on for host:port.
        ["--server", f"127.0.0.1:{tls_hpt.grpc_port}", "--grpc", "--ssl_target_name", "localhost"],
    ):
        out = run_cli("client", "status", *server, *status, env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["model_version_status"][0]["state"] == "AVAILABLE"
        out = run_client("status", *server, *status)
        assert out.returncode != 0 and "not signed by a certificate authority this client trusts" in out.stderr
    out = run_client("status", "--server", https_rest, "--ssl_key", tls_files["key"], *status)
    assert out.returncode != 0 and "--ssl_cert" in out.stderr


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_the_signature_flag_goes_into_the_body_as_written(hpt, pixels, tmp_path, grpc):
    """--signature is written into the request's text: NaN and Infinity, which serde_json refuses,
    and float64 literals, some of which serde_json's parse rounds, reach the server as written."""
    got = client_json(
        hpt, "predict", "--model", "half_plus_two", "--instances", "[[1.0], [NaN], [-Infinity]]",
        "--signature", "regress_x2_to_y3", grpc=grpc,
    )
    assert got["predictions"][0] == [3.5] and np.isnan(got["predictions"][1][0])
    assert got["predictions"][2] == [-np.inf]
    literal = "9.0093432428344947e3"
    (tmp_path / "f64.json").write_text('{"instances": [%s]}' % literal)
    got = client_json(pixels, "predict", "--model", "echo", "--json", tmp_path / "f64.json", "--signature", "bits", grpc=grpc)
    assert got == {"predictions": [int(np.float64(float(literal)).view(np.int64))]}
    # A body naming another signature than --signature's is refused; the same one is fine.
    (tmp_path / "named.json").write_text('{"instances": [[1.0]], "signature_name": "regress_x2_to_y3"}')
    named = ["predict", "--model", "half_plus_two", "--json", tmp_path / "named.json"]
    out = client(hpt, *named, "--signature", "serving_default", grpc=grpc)
    assert out.returncode == 1 and out.stdout == ""
    assert (
        '--signature serving_default conflicts with the request body\'s "signature_name": "regress_x2_to_y3"'
        in out.stderr
    ), out.stderr
    assert client_json(hpt, *named, "--signature", "regress_x2_to_y3", grpc=grpc) == {"predictions": [[3.5]]}


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_top_k_ranks_answers_with_nan_and_infinity(hpt, grpc):
    out = client(
        hpt, "predict", "--model", "half_plus_two", "--instances", "[[1.0], [NaN], [Infinity]]", "--top_k", "1",
        grpc=grpc,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "instance 0:", "  y: #0 2.500000", "instance 1:", "  y: #0 NaN", "instance 2:", "  y: #0 inf"
    ]


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_colour_images_to_one_channel_are_tf_image_rgb_to_grayscale(pixels, tmp_path, grpc):
    """Grey for a one-channel input is tf.image.rgb_to_grayscale (ITU-R 601 weights) of the
    float pixels, then resized: the same floats, to float32 rounding."""
    from PIL import Image

    tf = tensorflow()
    rng = np.random.default_rng(3)
    for name, size in (("exact", (40, 50)), ("resized", (23, 31))):
        rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"{name}.png")
        got = client_json(
            pixels, "predict", "--model", "echo", "--signature", "resized_gray", "--image", tmp_path / f"{name}.png",
            "--image_range", "0,255", grpc=grpc,
        )
        want = tf.image.resize(tf.image.rgb_to_grayscale(tf.cast(rgb, tf.float32)), (40, 50)).numpy()
        np.testing.assert_allclose(np.asarray(got["predictions"][0], np.float32), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_16_bit_pngs_and_float64_inputs_as_tensorflow_has_them(pixels, tmp_path, grpc):
    """16-bit samples become the bytes tf.io.decode_png(dtype=uint8) makes of them (the high
    byte); a float64 input gets its pixels scaled in float64."""
    tf = tensorflow()
    wide = np.array([[[0x12FF, 0x0080, 0xFFFF], [0x0100, 0x00FF, 0x7F80]],
                     [[0x0000, 0xFE7F, 0x8000], [0x017F, 0x80FF, 0x4242]]], dtype=np.uint16)
    png = tf.io.encode_png(wide).numpy()
    (tmp_path / "wide.png").write_bytes(png)
    want = tf.io.decode_png(png, channels=3).numpy()
    assert not np.array_equal(want, np.round(wide / 257))
    got = client_json(pixels, "predict", "--model", "echo", "--image", tmp_path / "wide.png", grpc=grpc)
    assert got == {"predictions": [want.tolist()]}

    def received(doubles):
        """What the model gets of these float64 pixels: over REST, what the server's JSON parse
        (TF Serving's rapidjson, not full precision) makes of them, which may be an ulp off."""
        if grpc:
            return {"predictions": [doubles.tolist()]}
        return pixels.post("/v1/models/echo:predict", {"signature_name": "doubles", "instances": [doubles.tolist()]}).json()

    doubles = ["predict", "--model", "echo", "--signature", "doubles", "--image", tmp_path / "wide.png"]
    assert client_json(pixels, *doubles, grpc=grpc) == received(want / 255)
    got = client_json(pixels, *doubles, "--image_range", "-1,0.1", grpc=grpc)
    assert got == received(-1 + want / 255 * (0.1 - -1))


def test_flag_values_out_of_range_are_refused(pixels):
    out = run_client("status", "--server", "127.0.0.1:1", "--model", "m", "--timeout_secs", "1e20")
    assert out.returncode == 1 and "give a positive number of seconds, at most 18446744073709551615" in out.stderr
    for bad in ("0,1e39", "nan,1", "0,inf"):
        out = client(pixels, "predict", "--model", "echo", "--image", "any.png", "--image_range", bad)
        assert out.returncode == 2 and "is not a finite float32 number" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def fake_grpc():
    """A gRPC ModelService answering GetModelStatus with the states 0 (UNKNOWN), 25 (none) and 30
    (AVAILABLE); never for the model "silent". Its port."""
    import threading
    from concurrent import futures

    import grpc

    tensorflow()
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    release = threading.Event()

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            if request.model_spec.name == "silent":
                release.wait()
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, state in ((1, 0), (2, 25), (3, 30)):
                response.model_version_status.add(version=version, state=state)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    release.set()
    server.stop(None)


def test_states_that_are_no_version_state_print_as_tf_serving_prints_them(fake_grpc):
    status = run_json("status", "--server", f"127.0.0.1:{fake_grpc}", "--grpc", "--model", "m")
    ok = {"error_code": "OK", "error_message": ""}
    assert status == {
        "model_version_status": [
            {"version": "1", "state": "UNKNOWN", "status": ok},
            {"version": "2", "state": 25, "status": ok},
            {"version": "3", "state": "AVAILABLE", "status": ok},
        ]
    }


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_no_answer_in_time(fake_grpc, grpc):
    """A call that gets no answer is said to, whichever the protocol: not a connection failure."""
    import socket

    with socket.socket() as silent:  # connections wait in its backlog, unanswered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = fake_grpc if grpc else silent.getsockname()[1]
        flags = ["--grpc", "--model", "silent"] if grpc else ["--model", "m"]
        out = run_client("status", "--server", f"127.0.0.1:{port}", *flags, "--timeout_secs", "0.5")
    assert out.returncode == 1
    assert f"127.0.0.1:{port}" in out.stderr and "no answer in time (--timeout_secs 0.5)" in out.stderr, out.stderr
    assert "TLS" not in out.stderr


def test_the_other_protocols_port_is_named(hpt, https_rest, tls_files):
    status = ["--model", "half_plus_two"]
    out = run_client("status", "--server", f"127.0.0.1:{hpt.grpc_port}", *status)
    assert out.returncode == 1 and "is this a gRPC port (add --grpc)?" in out.stderr, out.stderr
    out = run_client("status", "--server", f"127.0.0.1:{hpt.rest_port}", "--grpc", *status)
    assert out.returncode == 1, out.stderr
    assert "does not speak gRPC there" in out.stderr and "is this a REST port (drop --grpc)?" in out.stderr
    # An HTTP/1 server, as TF Serving's REST port is, answers gRPC's HTTP/2 with an HTTP/1 error.
    import http.server
    import threading

    http1 = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=http1.serve_forever, daemon=True).start()
    try:
        out = run_client("status", "--server", f"127.0.0.1:{http1.server_address[1]}", "--grpc", *status)
    finally:
        http1.shutdown()
    assert out.returncode == 1 and "if this is its REST port, drop --grpc" in out.stderr, out.stderr
    # A plain client at a TLS port.
    out = run_client("status", "--server", https_rest.replace("https:", "http:"), *status)
    assert out.returncode == 1 and "if the server uses TLS, give https://" in out.stderr, out.stderr
    # REST has no --ssl_target_name: the name to give is in --server.
    out = run_client("status", "--server", https_rest.replace("localhost", "127.0.0.1"), "--ssl_ca", tls_files["ca"], *status)
    assert out.returncode == 1 and 'not valid for name "127.0.0.1"' in out.stderr, out.stderr
    assert "connect by a name it is for, https://NAME:PORT" in out.stderr and "--ssl_target_name" not in out.stderr
