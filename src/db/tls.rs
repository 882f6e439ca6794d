//! TLS with libpq's `sslmode` meanings, on rustls through tokio-postgres' TLS hook
//! (tokio-postgres-rustls). rustls with the `ring` provider keeps the binary free of a system
//! OpenSSL (one static binary for CI images and laptops alike) and gives typed errors, so a
//! failed handshake can be explained: untrusted certificate, wrong host name, refused client
//! certificate.
//!
//! | sslmode | TLS | server certificate checked |
//! |---|---|---|
//! | disable | never | - |
//! | prefer (default) | when the server offers it | against the roots when a root file is given (as libpq) |
//! | require | always | as prefer |
//! | verify-ca | always | chain to the roots |
//! | verify-full | always | chain, and the host name |

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::{Roots, SslMode, TlsSpec};
use crate::exit::UsageError;

/// The connector for one cluster's connections (and their cancel requests).
pub type Tls = MakeRustlsConnect;

/// Builds the connector: loads the root and client certificates named by the connection
/// string (exit 2 when a file cannot be used, before any connection).
pub fn connector(spec: &TlsSpec) -> anyhow::Result<Tls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (&spec.roots, spec.mode) {
        (_, SslMode::Disable) | (Roots::None, _) => Arc::new(AcceptAny(provider.clone())),
        (roots, mode) => {
            let store = Arc::new(root_store(roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| UsageError(format!("sslrootcert: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &spec.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    UsageError(format!(
                        "sslcert: cannot read the client certificate {}: {e}",
                        cert.display()
                    ))
                })?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                UsageError(format!(
                    "sslkey: cannot read the client key {}: {e} (an unencrypted PEM key is needed)",
                    key.display()
                ))
            })?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                UsageError(format!(
                    "sslcert/sslkey: {} and {} do not make a usable client certificate: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

fn root_store(roots: &Roots) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            if !path.is_file() {
                return Err(UsageError(format!(
                    "sslrootcert: root certificate file {} does not exist; give the CA certificate that signed the server's certificate, or sslrootcert=system",
                    path.display()
                ))
                .into());
            }
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    UsageError(format!("sslrootcert: cannot read {}: {e}", path.display()))
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(UsageError(format!(
                    "sslrootcert: {} holds no usable PEM certificate",
                    path.display()
                ))
                .into());
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(UsageError(
                    "sslrootcert=system: the operating system's trust store has no certificates (on Debian: apt-get install ca-certificates)".into(),
                )
                .into());
            }
        }
        Roots::None => {}
    }
    Ok(store)
}

/// Where the roots come from, for messages ("not trusted by …").
pub fn roots_text(roots: &Roots) -> String {
    match roots {
        Roots::File(p) => format!("the root certificate(s) in {}", p.display()),
        Roots::System => "the operating system's trust store (sslrootcert=system)".into(),
        Roots::None => "no root certificate".into(),
    }
}

/// `require`/`prefer` without roots: encrypted, the server's certificate not checked (libpq's
/// meaning). Handshake signatures are still verified.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and require/prefer with roots): the chain must lead to a trusted root; the
/// host name is not checked. webpki checks the chain before the name, so a name mismatch
/// means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
