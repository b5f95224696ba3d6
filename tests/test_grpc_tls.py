"""`--ssl_config_file`: TLS on the gRPC port and on the `--grpc_socket_path` socket, with and without
client certificates, for the official client (tensorflow-serving-api over grpcio). Certificates are
made by the test."""

import datetime
import json
import socket

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import HALF_PLUS_TWO, failed_start

TIMEOUT = 30


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


def pem(key_or_cert):
    if isinstance(key_or_cert, x509.Certificate):
        return key_or_cert.public_bytes(serialization.Encoding.PEM)
    return key_or_cert.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki():
    ca = key_and_cert("oxserve test CA", ca=True)
    server = key_and_cert("localhost", issuer=ca)
    client = key_and_cert("a client", issuer=ca)
    return {"ca": pem(ca[1]), "server": (pem(server[0]), pem(server[1])), "client": (pem(client[0]), pem(client[1]))}


def ssl_config_file(tmp_path, pki, client_verify):
    """A text SSLConfig (PEM strings escaped as text-format strings: JSON's escapes are the same)."""
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


def predict(channel):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add().size = 2
    x.tensor_shape.dim.add().size = 1
    x.float_val.extend([1.0, 2.0])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return list(stub.Predict(request, timeout=TIMEOUT).outputs["y"].float_val)


def secure(server, pki, client_cert=False):
    key, cert = pki["client"] if client_cert else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"localhost:{server.grpc_port}", credentials)


def secure_socket(path, pki, client_cert=False):
    """A TLS channel over the Unix socket: the name the server's certificate is checked against is
    given, as gRPC would otherwise check the socket's path."""
    key, cert = pki["client"] if client_cert else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=key, certificate_chain=cert)
    return grpc.secure_channel(
        f"unix:{path}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def refused(channel):
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            predict(channel)
        return info.value.code()


def serve_on_socket(serve, tmp_path, pki, client_verify):
    path = tmp_path / "tls.sock"
    server = serve(
        "default",
        HALF_PLUS_TWO,
        f"--ssl_config_file={ssl_config_file(tmp_path, pki, client_verify)}",
        f"--grpc_socket_path={path}",
    )
    return server, path


def test_tls_serves_grpc_and_refuses_plaintext(tmp_path, pki, serve):
    server = serve("default", HALF_PLUS_TWO, f"--ssl_config_file={ssl_config_file(tmp_path, pki, False)}")
    with secure(server, pki) as channel:
        assert predict(channel) == [2.5, 3.0]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            predict(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The REST port stays plain HTTP, as TF Serving's.
    assert server.post("/v1/models/default:predict", {"instances": [1.0]}).json() == {"predictions": [2.5]}


def test_client_verify_requires_a_certificate_from_custom_ca(tmp_path, pki, serve):
    server = serve("default", HALF_PLUS_TWO, f"--ssl_config_file={ssl_config_file(tmp_path, pki, True)}")
    with secure(server, pki, client_cert=True) as channel:
        assert predict(channel) == [2.5, 3.0]
    with secure(server, pki, client_cert=False) as channel:
        with pytest.raises(grpc.RpcError) as info:
            predict(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unusable_ssl_configs_stop_the_server(tmp_path, pki):
    key, cert = pki["server"]
    no_ca = tmp_path / "no_ca.pbtxt"
    no_ca.write_text(f"server_key: {json.dumps(key.decode())}\nserver_cert: {json.dumps(cert.decode())}\nclient_verify: true\n")
    assert "client_verify needs custom_ca" in failed_start(f"--ssl_config_file={no_ca}")
    broken = tmp_path / "broken.pbtxt"
    broken.write_text('server_key: "not a key"\nserver_cert: "not a certificate"\n')
    assert "--ssl_config_file" in failed_start(f"--ssl_config_file={broken}")
    not_text = tmp_path / "not_text.pbtxt"
    not_text.write_text("server_key {\n")
    stderr = failed_start(f"--ssl_config_file={not_text}")
    assert "reading --ssl_config_file" in stderr
    assert f"{not_text}:1:" in stderr


def test_tls_on_the_unix_socket_too(tmp_path, pki, serve):
    # As TF Serving's server.cc: the socket listens with the TCP port's credentials.
    server, path = serve_on_socket(serve, tmp_path, pki, client_verify=False)
    with secure_socket(path, pki) as channel:
        assert predict(channel) == [2.5, 3.0]
    assert refused(grpc.insecure_channel(f"unix:{path}")) == grpc.StatusCode.UNAVAILABLE
    with secure(server, pki) as channel:
        assert predict(channel) == [2.5, 3.0]


def test_client_verify_on_the_unix_socket(tmp_path, pki, serve):
    _, path = serve_on_socket(serve, tmp_path, pki, client_verify=True)
    assert refused(secure_socket(path, pki, client_cert=False)) == grpc.StatusCode.UNAVAILABLE
    with secure_socket(path, pki, client_cert=True) as channel:
        assert predict(channel) == [2.5, 3.0]


def test_failed_handshakes_only_drop_their_connection(tmp_path, pki, serve):
    server, path = serve_on_socket(serve, tmp_path, pki, client_verify=False)
    # Clients that never finish a handshake, held open while others are served: a plaintext gRPC
    # client, bytes that are not TLS, a client that says nothing, one that leaves at once.
    assert refused(grpc.insecure_channel(f"unix:{path}")) == grpc.StatusCode.UNAVAILABLE
    assert refused(grpc.insecure_channel(f"localhost:{server.grpc_port}")) == grpc.StatusCode.UNAVAILABLE
    garbage, silent = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    with garbage, silent:
        garbage.connect(str(path))
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
        silent.connect(str(path))
        with socket.socket(socket.AF_UNIX) as leaving:
            leaving.connect(str(path))
        with secure_socket(path, pki) as channel:
            assert predict(channel) == [2.5, 3.0]
        with secure(server, pki) as channel:
            assert predict(channel) == [2.5, 3.0]
        # The refused ones are answered by closing: the server does not wait for more bytes.
        garbage.settimeout(TIMEOUT)
        while garbage.recv(4096):
            pass
    assert server.alive()
    assert "TLS handshake on the Unix socket" in server.log()
