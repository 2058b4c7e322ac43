//! Signing a node certificate from a CSR with the cluster CA (rcgen).
//!
//! The certificate has the parameters of `shoal-peer tls issue --node NAME`
//! (`shoal_peer::tls::Leaf::node`): common name = the node, DNS name `shoal-peer` (the
//! name peers dial each other's QUIC server with), key usage digital signature, extended
//! key usages server and client authentication (the one certificate serves QUIC and
//! authenticates to the scheduler and to other peers). Only the CSR's public key is used:
//! whatever else it asks for (names, extensions) is ignored. Its signature is checked,
//! so the requester holds the private key.
//!
//! The CA is `ca.crt` and `ca.key` in the issuer's directory, read at every signing (a
//! rotated Secret takes effect at once). `ca.crt` may hold more than one certificate
//! while the CA is rotated: the first is the one `ca.key` belongs to; the whole file is
//! handed to the peer as its `ca.crt`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;

use super::IssueError;

/// The DNS name in every peer certificate (as `shoal_peer::tls::SERVER_NAME`).
pub const PEER_SERVER_NAME: &str = "shoal-peer";

/// The cluster CA, as PEM texts.
pub struct Ca {
    /// `ca.crt`: the signing CA first, then any other CA still trusted.
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca { .. }") // never print key material
    }
}

impl Ca {
    /// Reads `ca.crt` and `ca.key` from `dir` and checks that they can sign; errors name
    /// the file, never its content.
    pub fn load(dir: &Path) -> Result<Ca, IssueError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map_err(|e| IssueError::Ca(format!("cannot read {}: {e}", path.display())))
        };
        let ca = Ca {
            cert_pem: read("ca.crt")?,
            key_pem: read("ca.key")?,
        };
        ca.issuer(dir)?;
        // The key must be the first certificate's, or every certificate signed would
        // fail to chain.
        let first = rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                IssueError::Ca(format!(
                    "{}: no PEM certificate",
                    dir.join("ca.crt").display()
                ))
            })?;
        let key = KeyPair::from_pem(&ca.key_pem)
            .map_err(|e| IssueError::Ca(format!("{}: {e}", dir.join("ca.key").display())))?;
        let matches = x509_parser::parse_x509_certificate(&first).is_ok_and(|(_, c)| {
            c.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
        });
        if !matches {
            return Err(IssueError::Ca(format!(
                "{} is not the key of the first certificate in {}",
                dir.join("ca.key").display(),
                dir.join("ca.crt").display()
            )));
        }
        Ok(ca)
    }

    fn issuer(&self, dir: &Path) -> Result<Issuer<'static, KeyPair>, IssueError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| IssueError::Ca(format!("{}: {e}", dir.join("ca.key").display())))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| IssueError::Ca(format!("{}: {e}", dir.join("ca.crt").display())))
    }
}

/// A signed node certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
}

/// How far back a certificate's validity starts (clock skew between nodes): a tenth of
/// its lifetime, at most five minutes, so that a short lifetime stays short.
pub fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

/// Checks `csr_der` (its signature, and its common name is `node` or absent) and signs a
/// node certificate for `node` valid from `now` (less [`backdate`]) for `lifetime`.
pub fn sign(
    csr_der: &[u8],
    node: &str,
    lifetime: Duration,
    now: SystemTime,
    ca: &Ca,
    ca_dir: &Path,
) -> Result<Signed, IssueError> {
    let csr =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| IssueError::Input(format!("unusable certificate signing request: {e}")))?;
    if let Some(cn) = csr.params.distinguished_name.get(&DnType::CommonName) {
        let cn = dn_text(cn).unwrap_or_default();
        if cn != node {
            return Err(IssueError::Input(format!(
                "the certificate signing request names {cn:?}, the request node {node:?}"
            )));
        }
    }
    let mut params = CertificateParams::new(vec![PEER_SERVER_NAME.to_owned()])
        .map_err(|e| IssueError::Internal(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut serial[..]);
    serial[0] &= 0x7f; // a positive INTEGER
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let not_after = now + lifetime;
    params.not_before = (now - backdate(lifetime)).into();
    params.not_after = not_after.into();
    let issuer = ca.issuer(ca_dir)?;
    let cert = params
        .signed_by(&csr.public_key, &issuer)
        .map_err(|e| IssueError::Internal(format!("signing: {e}")))?;
    // The encoding keeps whole seconds.
    let secs = not_after
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Signed {
        cert_pem: cert.pem(),
        not_after: UNIX_EPOCH + Duration::from_secs(secs),
    })
}

/// The text of a distinguished-name value, whatever its ASN.1 string type.
fn dn_text(v: &DnValue) -> Option<String> {
    match v {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        DnValue::TeletexString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa};

    fn ca(dir: &Path) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        Ca::load(dir).unwrap()
    }

    fn csr(cn: Option<&str>, key: &KeyPair) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn signs_the_csrs_key_for_the_node_with_the_peer_parameters() {
        let dir = std::env::temp_dir().join(format!("shoal-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca(&dir);
        let key = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let life = Duration::from_secs(30);
        let signed = sign(&csr(Some("node-a"), &key), "node-a", life, now, &ca, &dir).unwrap();
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "node-a");
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the certificate is for the CSR's key"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && eku.server_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            format!("{:?}", san.general_names),
            r#"[DNSName("shoal-peer")]"#
        );
        let validity = cert.validity();
        let life_secs = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert!((32..=34).contains(&life_secs), "{life_secs}");

        // A CSR without a common name is fine; one naming another node is not.
        sign(&csr(None, &key), "node-a", life, now, &ca, &dir).unwrap();
        let e = sign(&csr(Some("node-b"), &key), "node-a", life, now, &ca, &dir).unwrap_err();
        assert!(e.to_string().contains("node-b"), "{e}");
        // A CSR whose signature does not verify is refused.
        let mut bad = csr(Some("node-a"), &key);
        let n = bad.len();
        bad[n - 5] ^= 0x55;
        assert!(sign(&bad, "node-a", life, now, &ca, &dir).is_err());
        assert!(sign(b"not a csr", "node-a", life, now, &ca, &dir).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn backdating_keeps_short_lifetimes_short() {
        assert_eq!(backdate(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(
            backdate(Duration::from_secs(86_400)),
            Duration::from_secs(300)
        );
    }
}
