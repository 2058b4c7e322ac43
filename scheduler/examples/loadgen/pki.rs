//! Certificates for the mutual-TLS run: a cluster CA, the scheduler's serving
//! certificate (written to a `--tls-dir` directory) and the simulated peers'
//! client certificates (kept in memory). The parameters are those of
//! `shoal-peer tls init` / `tls issue` (`peer/src/tls.rs`: the CA, `Leaf::node`,
//! `Leaf::shared`, `Leaf::scheduler`): ECDSA P-256 keys, a CA constrained to
//! path length 0, node certificates naming the node in the common name and
//! `shoal-peer` as DNS name, for client and server authentication.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The common name of the shared peer certificate (`scheduler::tls`).
pub(crate) const SHARED_COMMON_NAME: &str = "shoal-peer";

/// The name the load generator dials the scheduler by (in its certificate).
const SCHEDULER_NAME: &str = "localhost";

/// One client certificate and its key, PEM.
pub(crate) struct ClientCert {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// The cluster CA, and the directory holding the scheduler's TLS files.
pub(crate) struct Pki {
    ca_cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// `ca.crt`, `tls.crt`, `tls.key` for `shoal-scheduler --tls-dir`.
    pub(crate) dir: PathBuf,
}

impl Pki {
    /// A new CA, and the scheduler's certificate for `localhost` and
    /// `127.0.0.1` written with the CA into a new directory `dir`.
    pub(crate) fn new(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "Shoal bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert_pem = ca.self_signed(&ca_key)?.pem();
        let pki = Pki {
            ca_cert_pem,
            issuer: Issuer::new(ca, ca_key),
            dir: dir.to_owned(),
        };
        let server = pki.sign(
            "shoal-scheduler",
            vec![SCHEDULER_NAME.into(), "127.0.0.1".into()],
            false,
        )?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.crt"), &pki.ca_cert_pem)?;
        std::fs::write(dir.join("tls.crt"), &server.cert_pem)?;
        std::fs::write(dir.join("tls.key"), &server.key_pem)?;
        Ok(pki)
    }

    /// A leaf certificate: a fresh key, signed by the CA.
    fn sign(
        &self,
        common_name: &str,
        names: Vec<String>,
        client_auth: bool,
    ) -> anyhow::Result<ClientCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if client_auth {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(86_400)).into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node certificate naming `node` (its peer id), as `shoal-peer tls
    /// issue --node` makes it.
    pub(crate) fn node(&self, node: &str) -> anyhow::Result<ClientCert> {
        self.sign(node, vec![SHARED_COMMON_NAME.into()], true)
    }

    /// The shared peer certificate (common name `shoal-peer`).
    pub(crate) fn shared(&self) -> anyhow::Result<ClientCert> {
        self.node(SHARED_COMMON_NAME)
    }

    /// `names` node certificates, and how long signing them took.
    pub(crate) fn nodes(
        &self,
        names: impl ExactSizeIterator<Item = String>,
    ) -> anyhow::Result<(Vec<ClientCert>, Duration)> {
        let started = Instant::now();
        let mut certs = Vec::with_capacity(names.len());
        for n in names {
            certs.push(self.node(&n)?);
        }
        Ok((certs, started.elapsed()))
    }

    /// tonic's client configuration presenting `cert`, trusting the CA.
    pub(crate) fn client_config(&self, cert: &ClientCert) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_cert_pem))
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
            .domain_name(SCHEDULER_NAME)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
