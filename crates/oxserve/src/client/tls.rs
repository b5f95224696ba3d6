//! The client's side of TLS, for REST (reqwest) and gRPC (our connector) alike: one rustls
//! `ClientConfig` from the `--ssl_*` flags, and the words for a failed handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{
    self, AlertDescription, CertificateError, ClientConfig, InvalidMessage, RootCertStore,
};

#[derive(Args, Debug, Clone, Default)]
#[command(rename_all = "snake_case")]
pub struct TlsArgs {
    /// PEM certificates of the certificate authorities to trust (default: the system's). Any
    /// --ssl_* flag turns TLS on.
    #[arg(long)]
    pub ssl_ca: Option<PathBuf>,
    /// A PEM client certificate (chain), for servers that verify their clients (client_verify).
    #[arg(long, requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    /// The PEM private key of --ssl_cert.
    #[arg(long, requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    /// The name to check the server's certificate against instead of the host in --server (as
    /// gRPC's ssl_target_name_override); needed over a Unix socket. gRPC only.
    #[arg(long)]
    pub ssl_target_name: Option<String>,
}

impl TlsArgs {
    pub fn any(&self) -> bool {
        self.ssl_ca.is_some()
            || self.ssl_cert.is_some()
            || self.ssl_key.is_some()
            || self.ssl_target_name.is_some()
    }

    /// The configuration both protocols use; gRPC adds its ALPN to a copy.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let client_auth = match (&self.ssl_cert, &self.ssl_key) {
            (Some(cert), Some(key)) => {
                let pem = std::fs::read(key)
                    .with_context(|| format!("--ssl_key {}: cannot read it", key.display()))?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    anyhow!(
                        "--ssl_key {}: no PEM private key in it ({e})",
                        key.display()
                    )
                })?;
                Some((certificates("--ssl_cert", cert)?, key_der))
            }
            (None, None) => None,
            _ => bail!("--ssl_cert and --ssl_key go together"),
        };
        let roots = match &self.ssl_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates("--ssl_ca", path)? {
                    roots
                        .add(certificate)
                        .with_context(|| format!("--ssl_ca {}", path.display()))?;
                }
                roots
            }
            None => system_roots()?,
        };
        // ring explicitly, rather than the process-wide default provider, which is ambiguous (and
        // rustls panics) as soon as another crate in the build enables aws-lc-rs.
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?
            .with_root_certificates(roots);
        match client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .context("--ssl_cert and --ssl_key"),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The PEM certificates in the file `path` of `flag`, at least one.
fn certificates(flag: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    if certificates.is_empty() {
        bail!("{flag} {}: no PEM certificate in it", path.display());
    }
    Ok(certificates)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        bail!(
            "no trusted certificates found on this system{}; give the server's CA with --ssl_ca",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        );
    }
    Ok(roots)
}

/// The TLS error somewhere in `err`'s chain, said with what to do about it over gRPC (`grpc`) or
/// REST.
pub fn tls_problem(err: &(dyn std::error::Error + 'static), grpc: bool) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(problem) = rustls_problem(e, grpc) {
            return Some(problem);
        }
        next = e.source();
    }
    None
}

/// rustls's error in `err`, if it is one. tokio-rustls and hyper-rustls hand it up inside an
/// `io::Error` (sometimes one inside another), whose `source()` skips what it wraps; h2 keeps only
/// the message of an I/O error, so a failure after the handshake (the server refusing the
/// client's certificate) is known by its text.
fn rustls_problem(err: &(dyn std::error::Error + 'static), grpc: bool) -> Option<String> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        let hint = HINTS.iter().find(|(known, _)| matches(known, tls));
        return Some(match hint {
            // REST has no --ssl_target_name: the name checked is the one in --server.
            Some((known, _)) if !grpc && *known == OTHER_NAME => {
                format!("{tls} (the server's certificate is for another name; connect by a name it is for, https://NAME:PORT)")
            }
            Some((_, hint)) => format!("{tls} ({hint})"),
            None => tls.to_string(),
        });
    }
    let io = err.downcast_ref::<std::io::Error>()?;
    if let Some(inner) = io.get_ref() {
        if let Some(problem) = rustls_problem(inner, grpc) {
            return Some(problem);
        }
    }
    let text = io.to_string();
    HINTS
        .iter()
        .find(|(known, _)| {
            matches!(known, rustls::Error::AlertReceived(_)) && known.to_string() == text
        })
        .map(|(known, hint)| format!("{known} ({hint})"))
}

/// Whether `err` is `known`; the name errors carry context (the names the certificate is for)
/// that the table cannot know.
fn matches(known: &rustls::Error, err: &rustls::Error) -> bool {
    match (known, err) {
        (
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ),
        ) => true,
        _ => known == err,
    }
}

const NOT_TRUSTED: &str = "the server's certificate is not signed by a certificate authority this client trusts: --ssl_ca, or the system's roots without it";
const CLIENT_CERT_NEEDED: &str =
    "the server requires a client certificate: --ssl_cert and --ssl_key";
const CLIENT_CERT_REFUSED: &str = "the server does not accept the client certificate of --ssl_cert";

const OTHER_NAME: rustls::Error =
    rustls::Error::InvalidCertificate(CertificateError::NotValidForName);

static HINTS: [(rustls::Error, &str); 7] = [
    (
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        NOT_TRUSTED,
    ),
    (
        OTHER_NAME,
        "the server's certificate is for another name; give that name with --ssl_target_name",
    ),
    (
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        CLIENT_CERT_NEEDED,
    ),
    (
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
        "the server may require a client certificate: --ssl_cert and --ssl_key",
    ),
    (
        rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        CLIENT_CERT_REFUSED,
    ),
    (
        rustls::Error::AlertReceived(AlertDescription::BadCertificate),
        CLIENT_CERT_REFUSED,
    ),
    (
        rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
        "does the server serve TLS at this address?",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn error(args: &TlsArgs) -> String {
        match args.client_config() {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let args = TlsArgs {
            ssl_ca: Some(missing.clone()),
            ..TlsArgs::default()
        };
        assert!(
            error(&args).starts_with(&format!("--ssl_ca {}: cannot read it", missing.display()))
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not PEM").unwrap();
        let args = TlsArgs {
            ssl_ca: Some(junk.clone()),
            ..TlsArgs::default()
        };
        assert_eq!(
            error(&args),
            format!("--ssl_ca {}: no PEM certificate in it", junk.display())
        );
        let args = TlsArgs {
            ssl_cert: Some(junk.clone()),
            ssl_key: Some(junk.clone()),
            ..TlsArgs::default()
        };
        assert!(error(&args).starts_with(&format!(
            "--ssl_key {}: no PEM private key in it",
            junk.display()
        )));
        let args = TlsArgs {
            ssl_cert: Some(junk.clone()),
            ..TlsArgs::default()
        };
        assert_eq!(error(&args), "--ssl_cert and --ssl_key go together");
    }
}
