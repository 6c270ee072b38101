//! Every connection reportd opens to PostgreSQL goes through [`open`]: the pools, the
//! migration and maintenance connections, the demo seeder and the SQL report generator.
//! It reads the URL's `sslmode`/`sslrootcert` (`config::parse_pg_url`) and connects
//! through tokio-postgres with a rustls connector on the aws-lc provider the AWS SDK
//! already builds. diesel-async's own `establish` speaks plain TCP only.

use std::sync::Arc;

use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{parse_pg_url, RootCerts, SslMode};

/// The client and its connection task (to be spawned); one type whatever the mode.
pub(crate) type Opened = (
    tokio_postgres::Client,
    tokio_postgres::Connection<
        tokio_postgres::Socket,
        <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
    >,
);

/// Why a connection could not be opened. The text never holds the URL's password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgConnectError {
    /// The URL's settings or the CA file are unusable (mostly caught by `config check`).
    #[error("bad connection settings: {0}")]
    Settings(String),
    /// The server refused or could not be reached; the whole cause chain, e.g.
    /// `error performing TLS handshake: invalid peer certificate: UnknownIssuer`.
    #[error("{0}")]
    Connect(String),
}

impl From<PgConnectError> for diesel::ConnectionError {
    fn from(error: PgConnectError) -> Self {
        match error {
            PgConnectError::Settings(text) => diesel::ConnectionError::InvalidConnectionUrl(text),
            PgConnectError::Connect(text) => diesel::ConnectionError::BadConnection(text),
        }
    }
}

/// Opens one connection to `url` as its `sslmode` says.
pub(crate) async fn open(url: &str) -> Result<Opened, PgConnectError> {
    let target = parse_pg_url(url).map_err(|e| PgConnectError::Settings(e.to_string()))?;
    let mut config: tokio_postgres::Config = target
        .url
        .parse()
        .map_err(|e| PgConnectError::Settings(chain(&e)))?;
    // `Require` makes tokio-postgres refuse a server that answers "no TLS" instead of
    // going on in plain text; the verifier below decides how much the certificate counts.
    config.ssl_mode(match target.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let connector = MakeRustlsConnect::new(client_config(target.mode, &target.roots)?);
    config
        .connect(connector)
        .await
        .map_err(|e| PgConnectError::Connect(chain(&e)))
}

/// A tokio-postgres client whose connection runs on a task of its own and ends when the
/// client is dropped.
pub(crate) async fn client(url: &str) -> Result<tokio_postgres::Client, PgConnectError> {
    let (client, connection) = open(url).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A diesel-async connection.
pub(crate) async fn diesel(url: &str) -> Result<AsyncPgConnection, diesel::ConnectionError> {
    let (client, connection) = open(url).await?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// An error and its causes on one line: tokio-postgres's own text says only "error
/// performing TLS handshake"; the certificate problem is in the causes.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The rustls settings for a mode (`Disable` gets one too: tokio-postgres never uses it).
fn client_config(mode: SslMode, roots: &RootCerts) -> Result<rustls::ClientConfig, PgConnectError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgConnectError::Settings(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Require => Arc::new(AnyCertificate(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
                    .build()
                    .map_err(|e| PgConnectError::Settings(e.to_string()))?;
            if mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The trusted CAs: the PEM file's certificates, or the system's store.
fn root_store(roots: &RootCerts) -> Result<rustls::RootCertStore, PgConnectError> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        RootCerts::System => {
            let (_added, _skipped) =
                store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        RootCerts::File(path) => {
            let unreadable = |e: &dyn std::fmt::Display| {
                PgConnectError::Settings(format!("sslrootcert `{}`: {e}", path.display()))
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
                store
                    .add(cert.map_err(|e| unreadable(&e))?)
                    .map_err(|e| unreadable(&e))?;
            }
        }
    }
    if store.is_empty() {
        return Err(PgConnectError::Settings(
            "no CA certificate to verify the server with (sslrootcert)".into(),
        ));
    }
    Ok(store)
}

/// `sslmode=require`: any certificate, as libpq does without a root certificate; the
/// handshake signatures are still checked, so the session key belongs to whoever holds
/// the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// `sslmode=verify-ca`: the chain must lead to a trusted CA; the name may differ (a
/// server reached through an address its certificate does not list).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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
