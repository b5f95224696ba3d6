"""`--ssl_config_file`: TLS on the gRPC port and on the `--grpc_socket_path` socket, with and without
client certificates, for the official client (tensorflow-serving-api over grpcio). Certificates are
made by the test (conftest's `pki`)."""

import json
import socket
import ssl

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import HALF_PLUS_TWO, failed_start, key_and_cert, pem, ssl_config_file, v1_cert

TIMEOUT = 30


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


def test_client_verify_takes_v1_certificates_that_custom_ca_signed(tmp_path, pki, serve):
    # `openssl x509 -req` (OpenSSL 3.0) makes v1 certificates, which TF Serving's OpenSSL takes
    # and rustls's webpki refuses: they are checked by oxserve's own verifier.
    server = serve("default", HALF_PLUS_TWO, f"--ssl_config_file={ssl_config_file(tmp_path, pki, True)}")
    ca = (serialization.load_pem_private_key(pki["ca_key"], None), x509.load_pem_x509_certificate(pki["ca"]))
    impostor = key_and_cert(ca[1].subject.rfc4514_string()[3:], ca=True)

    def channel(key_and_v1_cert):
        key, cert = key_and_v1_cert
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki["ca"], private_key=pem(key), certificate_chain=pem(cert)
        )
        return grpc.secure_channel(f"localhost:{server.grpc_port}", credentials)

    client = v1_cert("a v1 client", ca)
    with channel(client) as v1:
        assert predict(v1) == [2.5, 3.0]
    # gRPC negotiates TLS 1.3; in TLS 1.2 the client's handshake signature is checked another way.
    (tmp_path / "v1.pem").write_bytes(pem(client[1]) + pem(client[0]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=pki["ca"].decode())
    context.load_cert_chain(tmp_path / "v1.pem")
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("localhost", server.grpc_port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            # TLS 1.2's client speaks last in the handshake: the server's answer (its settings,
            # or an alert) tells whether it took the certificate.
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
            assert tls.recv(9)[3] == 0x04  # a SETTINGS frame
    # Named as custom_ca's, signed by another key; another CA's; expired.
    assert refused(channel(v1_cert("forged", ca, signer_key=impostor[0]))) == grpc.StatusCode.UNAVAILABLE
    assert refused(channel(v1_cert("stranger", key_and_cert("another CA", ca=True)))) == grpc.StatusCode.UNAVAILABLE
    assert refused(channel(v1_cert("expired", ca, valid_days=-2))) == grpc.StatusCode.UNAVAILABLE
    assert server.alive()
    log = server.log()
    assert "BadSignature" in log and "UnknownIssuer" in log and "Expired" in log, log


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
