//! `--ssl_config_file`: TLS on the gRPC port and on the `--grpc_socket_path` socket, as TF
//! Serving's `BuildServerCredentialsFromSSLConfigFile` sets it up for both: the server presents
//! `server_cert` (with `server_key`); with `client_verify`, every client must present a
//! certificate that `custom_ca` signed, and without it no client certificate is asked for. The
//! REST port stays plain HTTP, as in TF Serving.
//!
//! The handshake is done here rather than by tonic's `tls_config`, because tonic puts TLS
//! outermost on whatever stream it is given, while the socket's [`super::uds::AuthorityFix`] has
//! to see the decrypted HTTP/2 bytes; one acceptor serves both listeners, so they cannot drift.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use oxserve_proto::tensorflow::serving::SslConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::client_certs::ClientVerifier;

/// The server side of TLS for every gRPC listener.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl Tls {
    /// The TLS configuration of `ssl`, or why it cannot be one.
    pub fn new(ssl: &SslConfig) -> Result<Tls, String> {
        server_config(ssl)
            .map(|config| Tls {
                acceptor: TlsAcceptor::from(Arc::new(config)),
            })
            .map_err(|err| format!("--ssl_config_file: {err}"))
    }

    /// Runs the server's handshake on `stream`, within `timeout`
    /// (`grpc.server_handshake_timeout_ms`: a client that connects and never finishes the
    /// handshake gives its socket back); `client` says where it comes from in the error (e.g.
    /// "with 127.0.0.1:5000").
    pub async fn accept<S>(
        &self,
        stream: S,
        client: &str,
        timeout: Option<Duration>,
    ) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let accepting = self.acceptor.accept(stream);
        let handshake = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, accepting)
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("not finished after {} ms", timeout.as_millis()),
                    ))
                }),
            None => accepting.await,
        };
        handshake
            .map_err(|err| io::Error::new(err.kind(), format!("TLS handshake {client}: {err}")))
    }
}

fn server_config(ssl: &SslConfig) -> Result<ServerConfig, String> {
    if ssl.server_key.is_empty() || ssl.server_cert.is_empty() {
        return Err("server_key and server_cert are both required".into());
    }
    // ring explicitly, rather than the process-wide default provider, which is ambiguous (and
    // rustls panics) as soon as another crate in the build enables aws-lc-rs.
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let builder = if ssl.client_verify {
        if ssl.custom_ca.is_empty() {
            return Err(
                "client_verify needs custom_ca, the certificate authority that signs the clients' certificates"
                    .into(),
            );
        }
        builder.with_client_cert_verifier(client_verifier(&ssl.custom_ca, provider)?)
    } else {
        builder.with_no_client_auth()
    };
    if ssl
        .server_key
        .contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    {
        // gRPC cannot use one either: it has no way to be given the passphrase.
        return Err(
            "server_key is encrypted (ENCRYPTED PRIVATE KEY): give the key unencrypted, e.g. from `openssl pkey -in key.pem`"
                .into(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(ssl.server_key.as_bytes())
        .map_err(|err| format!("server_key: no PEM private key ({err})"))?;
    let mut config = builder
        .with_single_cert(certificates("server_cert", &ssl.server_cert)?, key)
        .map_err(|err| format!("server_key and server_cert: {err}"))?;
    // gRPC is HTTP/2 only; gRPC clients insist on negotiating it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Requires a client certificate that one of the certificates in `custom_ca` signed.
fn client_verifier(
    custom_ca: &str,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>, String> {
    let authorities = certificates("custom_ca", custom_ca)?;
    let mut roots = RootCertStore::empty();
    for certificate in &authorities {
        roots
            .add(certificate.clone())
            .map_err(|err| format!("custom_ca: {err}"))?;
    }
    let algorithms = provider.signature_verification_algorithms;
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| format!("custom_ca: {err}"))?;
    Ok(Arc::new(ClientVerifier::new(
        webpki,
        &authorities,
        algorithms,
    )))
}

/// The PEM certificates of the field `name`, at least one.
fn certificates(name: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{name}: {err}"))?;
    if certificates.is_empty() {
        return Err(format!("{name}: no PEM certificate"));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(client_verify: bool, custom_ca: &str) -> SslConfig {
        SslConfig {
            server_key: "not a key".into(),
            server_cert: "not a certificate".into(),
            custom_ca: custom_ca.into(),
            client_verify,
        }
    }

    fn error(ssl: &SslConfig) -> String {
        match Tls::new(ssl) {
            Ok(_) => panic!("{ssl:?} was accepted"),
            Err(err) => err,
        }
    }

    #[test]
    fn unusable_configs_are_refused_with_the_field_at_fault() {
        assert!(
            error(&SslConfig::default()).contains("server_key and server_cert are both required")
        );
        assert!(error(&config(true, "")).contains("client_verify needs custom_ca"));
        assert!(error(&config(true, "not a CA")).contains("custom_ca: no PEM certificate"));
        assert!(error(&config(false, "")).contains("server_key: no PEM private key"));
        let encrypted = SslConfig {
            server_key:
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    .into(),
            ..config(false, "")
        };
        assert!(error(&encrypted).contains("server_key is encrypted"));
    }
}
