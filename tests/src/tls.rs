//! Test certificates made with rcgen and written as PEM files: a CA, a server certificate
//! for `127.0.0.1` and `localhost` issued by it, and a client certificate issued by it.
//! Enough to run a registry that requires client certificates ([`crate::registry`]).
//!
//! Not here: certificate rotation, revocation, intermediate CAs; Shoal's own peer
//! certificates (`shoal_peer::tls`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The PEM files of a test CA and the certificates it issued.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (`ca.crt`).
    pub ca_cert: PathBuf,
    /// The server certificate (`server.pem`), for `127.0.0.1`, `::1` and `localhost`.
    pub server_cert: PathBuf,
    /// The server key (`server-key.pem`).
    pub server_key: PathBuf,
    /// The client certificate (`client.cert`: Docker's name for it).
    pub client_cert: PathBuf,
    /// The client key (`client.key`).
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates a CA with a server and a client certificate into `dir` (created).
    pub fn generate(dir: &Path) -> anyhow::Result<TestPki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "Shoal test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let issue = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = issue(
            vec!["127.0.0.1".into(), "::1".into(), "localhost".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key_pem) = issue(
            Vec::new(),
            "shoal-test-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let pki = TestPki {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.cert"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.ca_cert, ca_cert.pem())?;
        std::fs::write(&pki.server_cert, server_pem)?;
        std::fs::write(&pki.server_key, server_key_pem)?;
        std::fs::write(&pki.client_cert, client_pem)?;
        std::fs::write(&pki.client_key, client_key_pem)?;
        Ok(pki)
    }
}
