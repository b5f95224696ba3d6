"""Shared fixtures: start the real oxserve binary on loopback with the real TensorFlow runtime."""

import contextlib
import datetime
import json
import os
import pathlib
import socket
import stat
import subprocess
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("OXSERVE_BIN", ROOT / "target" / "release" / "oxserve"))
TESTDATA = ROOT / "tests" / "fixtures" / "tf-serving-testdata"
DEMO = ROOT / "demo_models"

HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu"
HALF_PLUS_TWO_TF2 = TESTDATA / "saved_model_half_plus_two_tf2_cpu"
HALF_PLUS_THREE = TESTDATA / "saved_model_half_plus_three"
TWO_VERSIONS = TESTDATA / "saved_model_half_plus_two_2_versions"
BAD_MODEL = TESTDATA / "bad_half_plus_two"
MONITORING_CONFIG = TESTDATA / "monitoring_config.txt"
# Echo signatures for every dtype oxserve serves (see make_dtypes_model.py next to it).
DTYPES_MODEL = ROOT / "crates" / "oxserve-tensorflow" / "tests" / "fixtures" / "dtypes_model"
METRICS_PATH = "/monitoring/prometheus/metrics"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running `oxserve serve` process and a small REST client for it."""

    def __init__(self, proc, rest_port, grpc_port, log_path):
        self.proc = proc
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{rest_port}"

    def url(self, path):
        return self.base + path

    def get(self, path, **kwargs):
        return requests.get(self.url(path), timeout=60, **kwargs)

    def post(self, path, body=None, **kwargs):
        """POSTs `body`: bytes/str as is, anything else as JSON."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        return requests.post(self.url(path), data=body, timeout=60, **kwargs)

    def log(self):
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None


def start(tmp_dir, *args, ready_path, timeout=120, env=None):
    """Starts `oxserve serve` with `args` on free loopback ports; waits until `ready_path` answers."""
    assert BIN.exists(), f"{BIN} is missing: run scripts/setup (it builds the release binary)"
    rest_port, grpc_port = free_port(), free_port()
    log_path = pathlib.Path(tmp_dir) / f"oxserve-{rest_port}.log"
    log = open(log_path, "wb")
    cmd = [str(BIN), "serve", f"--rest_api_port={rest_port}", f"--port={grpc_port}", *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, rest_port, grpc_port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"oxserve exited with {proc.returncode}:\n{server.log()}")
        try:
            if requests.get(server.url(ready_path), timeout=5).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"oxserve did not become ready in {timeout}s:\n{server.log()}")


def stop(server):
    if server.alive():
        server.proc.terminate()
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    # A panic caught on the way (a request's task, a batch thread) may still have been answered:
    # the log is where it shows. In a debug build this is where an arithmetic overflow shows too.
    assert "panicked" not in server.log(), server.log()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """A factory: serve(model_name, base_path, *extra_flags, env=None) -> Server, stopped at module
    end; `env` replaces the server's environment."""
    servers = []

    def factory(model_name, base_path, *extra, env=None):
        server = start(
            tmp_path_factory.mktemp("oxserve"),
            f"--model_name={model_name}",
            f"--model_base_path={base_path}",
            *extra,
            ready_path=f"/v1/models/{model_name}",
            env=env,
        )
        servers.append(server)
        return server

    yield factory
    for server in servers:
        stop(server)


@contextlib.contextmanager
def running(tmp_dir, *args, ready_path, env=None):
    server = start(tmp_dir, *args, ready_path=ready_path, env=env)
    try:
        yield server
    finally:
        stop(server)


def run_cli(*args, env=None, timeout=120):
    """Runs the oxserve binary with `args`; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def failed_start(*flags):
    """Runs `oxserve serve` on half_plus_two with `flags`, expecting it to stop with an error (no
    load retries); returns its stderr."""
    result = run_cli(
        "serve",
        f"--port={free_port()}",
        f"--rest_api_port={free_port()}",
        "--model_name=default",
        f"--model_base_path={HALF_PLUS_TWO}",
        "--max_num_load_retries=0",
        *flags,
    )
    assert_failed_start(result)
    return result.stderr


def assert_failed_start(result):
    """tensorflow_model_server's report of a failed start: its words, and status 255 (-1)."""
    assert result.returncode == 255, (result.returncode, result.stderr)
    assert "Failed to start server. Error: " in result.stderr, result.stderr


def key_and_cert(name, issuer=None, ca=False):
    """A new key and a certificate for `name`, signed by `issuer` (key, cert) or self-signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_name = (issuer[0], issuer[1].subject) if issuer else (key, subject)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    return key, cert


def v1_cert(name, issuer, signer_key=None, valid_days=1):
    """A new key and an X.509 v1 certificate for `name` (no version field, no extensions: what
    `openssl x509 -req` makes by default) naming `issuer` (key, cert) as its issuer, signed by
    `signer_key` (the issuer's key unless given); expired `-valid_days` ago when that is negative.
    cryptography writes only v3, so the version field is cut from its TBSCertificate, which is
    then signed again."""

    def tlv(tag, content):
        length = len(content)
        if length < 0x80:
            return bytes([tag, length]) + content
        size = length.to_bytes((length.bit_length() + 7) // 8, "big")
        return bytes([tag, 0x80 | len(size)]) + size + content

    def split(der):
        """The content of the TLV at the start of `der`, and what follows it."""
        length, start = der[1], 2
        if length & 0x80:
            start = 2 + (length & 0x7F)
            length = int.from_bytes(der[2:start], "big")
        return der[start : start + length], der[start + length :]

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ends = now + datetime.timedelta(days=valid_days)
    v3 = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, ends) - datetime.timedelta(days=1))
        .not_valid_after(ends)
        .sign(issuer[0], hashes.SHA256())
    )
    version_field = bytes.fromhex("a003020102")
    tbs_content, _ = split(v3.tbs_certificate_bytes)
    assert tbs_content.startswith(version_field)
    tbs = tlv(0x30, tbs_content[len(version_field) :])
    cert_content, _ = split(v3.public_bytes(serialization.Encoding.DER))
    after_tbs = cert_content[len(v3.tbs_certificate_bytes) :]
    _, after_algorithm = split(after_tbs)
    algorithm = after_tbs[: len(after_tbs) - len(after_algorithm)]
    signature = (signer_key or issuer[0]).sign(tbs, ec.ECDSA(hashes.SHA256()))
    cert = x509.load_der_x509_certificate(tlv(0x30, tbs + algorithm + tlv(0x03, b"\0" + signature)))
    assert cert.version == x509.Version.v1
    return key, cert


def writable(path):
    """Test data is read-only in the repository: make a copy writable."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
    os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)


def pem(key_or_cert):
    if isinstance(key_or_cert, x509.Certificate):
        return key_or_cert.public_bytes(serialization.Encoding.PEM)
    return key_or_cert.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki():
    """PEMs of a test CA (and its key), a server certificate it signed for localhost, and a client's."""
    ca = key_and_cert("oxserve test CA", ca=True)
    server = key_and_cert("localhost", issuer=ca)
    client = key_and_cert("a client", issuer=ca)
    return {"ca": pem(ca[1]), "ca_key": pem(ca[0]), "server": (pem(server[0]), pem(server[1])), "client": (pem(client[0]), pem(client[1]))}


def ssl_config_file(tmp_path, pki, client_verify):
    """A text SSLConfig for `--ssl_config_file` (PEM strings escaped as text-format strings: JSON's
    escapes are the same)."""
    key, cert = pki["server"]
    fields = {"server_key": key.decode(), "server_cert": cert.decode()}
    if client_verify:
        fields["custom_ca"] = pki["ca"].decode()
    text = "".join(f"{name}: {json.dumps(value)}\n" for name, value in fields.items())
    if client_verify:
        text += "client_verify: true\n"
    path = tmp_path / f"ssl-{client_verify}.pbtxt"
    path.write_text(text)
    return path


def wait_for(what, check, timeout=90):
    """Polls `check` until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def thread_names(pid):
    """The names of the threads of process `pid` (Linux). A thread may exit between the listing
    and the read (tokio's blocking pool shrinks when idle); it is left out."""
    names = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return names


def save_busy_model(base):
    """Saves version 1 of a model under `base` that keeps TensorFlow busy: `serving_default` spins
    for `seconds[0]` seconds in a while_loop (which TensorFlow can cancel between iterations), and
    `read` blocks in one ReadFile op (which it cannot cancel) until its path, a FIFO, is opened for
    writing. Both return their input."""
    import tensorflow as tf

    class Busy(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
        def spin(self, seconds):
            end = tf.timestamp() + seconds[0]
            (spins,) = tf.while_loop(lambda i: tf.timestamp() < end, lambda i: i + 1, [tf.constant(0, tf.int64)])
            return {"y": seconds + tf.cast(spins * 0, tf.float64)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def read(self, path):
            return {"y": path + tf.io.read_file(path[0])}

    module = Busy()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.spin, "read": module.read})


def metric_families(server):
    """The server's Prometheus metrics (started with --monitoring_config_file=MONITORING_CONFIG),
    parsed by the official client library, by family name."""
    response = server.get(METRICS_PATH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def metric(families, family, sample=None, **labels):
    """The value of the sample named `sample` (default: the family's name; prometheus_client names
    counter samples `<name>_total`) with these labels."""
    names = {sample} if sample else {family, family + "_total"}
    found = families.get(family)
    if found is None:
        return None
    for s in found.samples:
        if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def load_golden(name):
    return json.loads((TESTDATA / name).read_text())


def tf2_metadata_golden():
    """TF Serving's golden `signature_def` metadata of the TF2 half_plus_two, brought up to date
    with the fixture's saved_model.pb. The golden predates `SignatureDef.defaults`: TF Serving
    echoes the MetaGraphDef's SignatureDefs as they are, so the init op's empty map is printed too,
    and the TF 2.14 export records the default value of `serving_default`'s input `x`."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    golden = load_golden("saved_model_half_plus_two_tf2_2_versions_metadata.json")
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((HALF_PLUS_TWO_TF2 / "00000123" / "saved_model.pb").read_bytes())
    signatures = golden["metadata"]["signature_def"]["signature_def"]
    for key, signature in saved_model.meta_graphs[0].signature_def.items():
        signatures[key]["defaults"] = {
            name: json_format.MessageToDict(
                tensor, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for name, tensor in signature.defaults.items()
        }
    assert signatures["serving_default"]["defaults"], "the fixture has a default to check"
    return golden


def expected_outputs():
    path = DEMO / "expected_outputs.json"
    assert path.exists(), "demo_models/ is missing: run scripts/setup (it exports the demo models)"
    return json.loads(path.read_text())
