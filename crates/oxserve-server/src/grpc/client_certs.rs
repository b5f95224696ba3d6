//! Client certificates as TF Serving's OpenSSL takes them. rustls's verifier (webpki) refuses
//! X.509 v1 end-entity certificates, and `openssl x509 -req`, the command TF Serving's mutual-TLS
//! guides give, makes exactly those unless it is given extensions (OpenSSL 3.0, Debian 12's).
//! A v1 certificate has no extensions, so there is nothing in it to check but who signed it and
//! when it is valid: one is taken when a certificate of `custom_ca` signed it directly. Every
//! other certificate goes through webpki unchanged.

use std::sync::Arc;

use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{
    verify_tls13_signature_with_raw_key, WebPkiSupportedAlgorithms,
};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, SignatureVerificationAlgorithm, SubjectPublicKeyInfoDer, UnixTime,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, PeerMisbehaved,
    SignatureScheme,
};
use x509_cert::certificate::Version;
use x509_cert::der::asn1::SequenceRef;
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::Certificate;

#[derive(Debug)]
pub struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    /// `custom_ca`'s certificates: who may have signed a v1 certificate.
    authorities: Vec<Certificate>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    /// `webpki` verifies every certificate but v1 ones, which one of `authorities` must have
    /// signed with one of `algorithms`.
    pub fn new(
        webpki: Arc<dyn ClientCertVerifier>,
        authorities: &[CertificateDer<'_>],
        algorithms: WebPkiSupportedAlgorithms,
    ) -> ClientVerifier {
        ClientVerifier {
            webpki,
            // One webpki took as a trust anchor but this parser cannot read signs nothing here.
            authorities: authorities
                .iter()
                .filter_map(|der| Certificate::from_der(der).ok())
                .collect(),
            algorithms,
        }
    }

    fn verify_before_v3(&self, certificate: &Certificate, now: UnixTime) -> Result<(), Error> {
        let tbs = certificate.tbs_certificate();
        let now = now.as_secs();
        let validity = tbs.validity();
        if now < validity.not_before.to_unix_duration().as_secs() {
            return Err(CertificateError::NotValidYet.into());
        }
        if now > validity.not_after.to_unix_duration().as_secs() {
            return Err(CertificateError::Expired.into());
        }
        let signed = tbs.to_der().map_err(|_| CertificateError::BadEncoding)?;
        let signature_algorithm = algorithm_id(certificate.signature_algorithm())?;
        let signature = certificate
            .signature()
            .as_bytes()
            .ok_or(CertificateError::BadEncoding)?;
        let mut issuers = self
            .authorities
            .iter()
            .filter(|authority| authority.tbs_certificate().subject() == tbs.issuer())
            .peekable();
        if issuers.peek().is_none() {
            return Err(CertificateError::UnknownIssuer.into());
        }
        for issuer in issuers {
            let key = issuer.tbs_certificate().subject_public_key_info();
            let verified = self.algorithms.all.iter().any(|algorithm| {
                algorithm.signature_alg_id().as_ref() == signature_algorithm.as_slice()
                    && verifies(*algorithm, key, &signed, signature)
            });
            if verified {
                return Ok(());
            }
        }
        Err(CertificateError::BadSignature.into())
    }

    fn scheme_algorithms(
        &self,
        scheme: SignatureScheme,
    ) -> Result<&'static [&'static dyn SignatureVerificationAlgorithm], Error> {
        self.algorithms
            .mapping
            .iter()
            .find(|(known, _)| *known == scheme)
            .map(|(_, algorithms)| *algorithms)
            .ok_or_else(|| PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into())
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match before_v3(end_entity) {
            Some(certificate) => self
                .verify_before_v3(&certificate, now)
                .map(|()| ClientCertVerified::assertion()),
            None => self
                .webpki
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let Some(certificate) = before_v3(cert) else {
            return self.webpki.verify_tls12_signature(message, cert, dss);
        };
        // As rustls's own TLS 1.2 check: any algorithm of the scheme that suits the key.
        let key = certificate.tbs_certificate().subject_public_key_info();
        if self
            .scheme_algorithms(dss.scheme)?
            .iter()
            .any(|algorithm| verifies(*algorithm, key, message, dss.signature()))
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(CertificateError::BadSignature.into())
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let Some(certificate) = before_v3(cert) else {
            return self.webpki.verify_tls13_signature(message, cert, dss);
        };
        let key = certificate
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|_| CertificateError::BadEncoding)?;
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(key),
            dss,
            &self.algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `der` parsed, when it is a certificate from before extensions (v1, or the rare v2), which
/// webpki refuses.
fn before_v3(der: &CertificateDer<'_>) -> Option<Certificate> {
    Certificate::from_der(der)
        .ok()
        .filter(|certificate| certificate.tbs_certificate().version() != Version::V3)
}

/// Whether `signature` of `message` verifies with `key` under `algorithm` (which must be for
/// the key's kind).
fn verifies(
    algorithm: &dyn SignatureVerificationAlgorithm,
    key: &SubjectPublicKeyInfoOwned,
    message: &[u8],
    signature: &[u8],
) -> bool {
    let (Ok(key_algorithm), Some(key_bits)) = (
        algorithm_id(&key.algorithm),
        key.subject_public_key.as_bytes(),
    ) else {
        return false;
    };
    algorithm.public_key_alg_id().as_ref() == key_algorithm.as_slice()
        && algorithm
            .verify_signature(key_bits, message, signature)
            .is_ok()
}

/// An AlgorithmIdentifier as webpki names algorithms: the DER of its contents, without the
/// SEQUENCE's tag and length.
fn algorithm_id(algorithm: &AlgorithmIdentifierOwned) -> Result<Vec<u8>, Error> {
    let der = algorithm
        .to_der()
        .map_err(|_| CertificateError::BadEncoding)?;
    let sequence = <&SequenceRef>::from_der(&der).map_err(|_| CertificateError::BadEncoding)?;
    Ok(sequence.as_bytes().to_vec())
}
