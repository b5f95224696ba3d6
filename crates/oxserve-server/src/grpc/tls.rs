//! `--ssl_config_file`: TLS on the gRPC port, as TF Serving's
//! `BuildServerCredentialsFromSSLConfigFile` sets it up: the server presents `server_cert` (with
//! `server_key`); with `client_verify`, every client must present a certificate that `custom_ca`
//! signed, and without it no client certificate is asked for. The REST port stays plain HTTP, as
//! in TF Serving.

use oxserve_proto::tensorflow::serving::SslConfig;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The TLS configuration of `ssl`, or why it cannot be one.
pub fn server_config(ssl: &SslConfig) -> Result<ServerTlsConfig, String> {
    if ssl.server_key.is_empty() || ssl.server_cert.is_empty() {
        return Err("--ssl_config_file: server_key and server_cert are both required".into());
    }
    let tls =
        ServerTlsConfig::new().identity(Identity::from_pem(&ssl.server_cert, &ssl.server_key));
    if !ssl.client_verify {
        return Ok(tls);
    }
    if ssl.custom_ca.is_empty() {
        return Err(
            "--ssl_config_file: client_verify needs custom_ca, the certificate authority that signs the clients' certificates"
                .into(),
        );
    }
    Ok(tls
        .client_ca_root(Certificate::from_pem(&ssl.custom_ca))
        .client_auth_optional(false))
}
