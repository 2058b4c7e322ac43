//! The issuer's flags (`--issuer-*`, `--kube-*`; the same keys, snake_case, in the
//! scheduler's config file) and their validation into [`IssuerSettings`]. The issuer is
//! on only with `--issuer-ca-dir`; every other flag has a default but the peers'
//! ServiceAccount and DaemonSet, which must be named.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::IssuerLimits;
use super::review::{KubeApiConfig, ReviewPolicy};
use crate::config::parse_duration;

/// In-cluster ServiceAccount files (the scheduler's own token and the cluster CA).
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Flags of the certificate issuer (flattened into the scheduler's flags).
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerArgs {
    /// Turns the certificate issuer on: a directory with the cluster CA's ca.crt and
    /// ca.key, which signs node certificates for peers whose ServiceAccount token the
    /// Kubernetes TokenReview API vouches for. Needs --tls-dir (its serving
    /// certificate) [default: off].
    #[arg(long, env = "SHOAL_ISSUER_CA_DIR")]
    pub issuer_ca_dir: Option<PathBuf>,
    /// The issuer's address (gRPC over TLS without client certificates), bound as --grpc-listen is [default: `[::]:7601`].
    #[arg(long, env = "SHOAL_ISSUER_LISTEN")]
    pub issuer_listen: Option<String>,
    /// Lifetime of the node certificates issued; peers renew at two thirds of it, e.g.
    /// 24h, 30s (at least 10s) [default: 24h].
    #[arg(long, env = "SHOAL_ISSUER_CERT_LIFETIME")]
    pub issuer_cert_lifetime: Option<String>,
    /// The audience peers' projected ServiceAccount tokens are bound to [default: shoal-issuer].
    #[arg(long, env = "SHOAL_ISSUER_AUDIENCE")]
    pub issuer_audience: Option<String>,
    /// The peers' ServiceAccount, NAMESPACE/NAME: only its tokens get certificates
    /// (required with --issuer-ca-dir).
    #[arg(long, env = "SHOAL_ISSUER_SERVICE_ACCOUNT")]
    pub issuer_service_account: Option<String>,
    /// The peer DaemonSet (in the ServiceAccount's namespace): a token's pod must be
    /// one of its pods (required with --issuer-ca-dir).
    #[arg(long, env = "SHOAL_ISSUER_DAEMONSET")]
    pub issuer_daemonset: Option<String>,
    /// The Kubernetes API server's https:// URL [default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].
    #[arg(long, env = "SHOAL_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// The scheduler's own ServiceAccount token, re-read at every call [default:
    /// /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(long, env = "SHOAL_KUBE_TOKEN_FILE")]
    pub kube_token_file: Option<PathBuf>,
    /// The CA of the API server's certificate [default:
    /// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt].
    #[arg(long, env = "SHOAL_KUBE_CA_FILE")]
    pub kube_ca_file: Option<PathBuf>,
}

/// The issuer's validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// `ca.crt` and `ca.key` of the signing CA, read at every signing.
    pub ca_dir: PathBuf,
    /// Lifetime of the certificates issued.
    pub lifetime: Duration,
    /// Who may get a certificate.
    pub policy: ReviewPolicy,
    /// How to reach the Kubernetes API.
    pub kube: KubeApiConfig,
    /// Rate and concurrency bounds.
    pub limits: IssuerLimits,
}

impl IssuerArgs {
    /// Each flag, else the file's value.
    pub fn or(self, file: IssuerArgs) -> IssuerArgs {
        IssuerArgs {
            issuer_ca_dir: self.issuer_ca_dir.or(file.issuer_ca_dir),
            issuer_listen: self.issuer_listen.or(file.issuer_listen),
            issuer_cert_lifetime: self.issuer_cert_lifetime.or(file.issuer_cert_lifetime),
            issuer_audience: self.issuer_audience.or(file.issuer_audience),
            issuer_service_account: self.issuer_service_account.or(file.issuer_service_account),
            issuer_daemonset: self.issuer_daemonset.or(file.issuer_daemonset),
            kube_api_url: self.kube_api_url.or(file.kube_api_url),
            kube_token_file: self.kube_token_file.or(file.kube_token_file),
            kube_ca_file: self.kube_ca_file.or(file.kube_ca_file),
        }
    }

    /// The issuer's settings (`None` when it is off); problems go to `errors`.
    /// `mutual_tls`: whether gRPC runs with `--tls-dir`, whose serving certificate the
    /// issuer uses.
    pub fn resolve(self, mutual_tls: bool, errors: &mut Vec<String>) -> Option<IssuerSettings> {
        let ca_dir = self.issuer_ca_dir?;
        let before = errors.len();
        if !mutual_tls {
            errors.push(
                "--issuer-ca-dir needs --tls-dir: the issuer serves TLS with the scheduler's certificate"
                    .into(),
            );
        }
        let listen = self.issuer_listen.unwrap_or_else(|| "[::]:7601".into());
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(format!(
                    "--issuer-listen: {listen:?} is not an ip:port address"
                ))
            })
            .ok();
        let lifetime = self.issuer_cert_lifetime.unwrap_or_else(|| "24h".into());
        let lifetime = match parse_duration(&lifetime) {
            Ok(d) if (Duration::from_secs(10)..=Duration::from_secs(365 * 86_400)).contains(&d) => {
                Some(d)
            }
            Ok(_) => {
                errors.push(format!(
                    "--issuer-cert-lifetime: {lifetime} must be from 10s to 365 days"
                ));
                None
            }
            Err(e) => {
                errors.push(format!("--issuer-cert-lifetime: {e}"));
                None
            }
        };
        let audience = self
            .issuer_audience
            .unwrap_or_else(|| "shoal-issuer".into());
        if audience.is_empty() {
            errors.push("--issuer-audience: must not be empty".into());
        }
        let account = match self
            .issuer_service_account
            .as_deref()
            .map(|s| s.split_once('/'))
        {
            Some(Some((ns, name))) if dns_label(ns) && dns_subdomain(name) => {
                Some((ns.to_owned(), name.to_owned()))
            }
            Some(_) => {
                errors.push(format!(
                    "--issuer-service-account: {:?} is not NAMESPACE/NAME",
                    self.issuer_service_account.unwrap_or_default()
                ));
                None
            }
            None => {
                errors.push(
                    "--issuer-service-account is required with --issuer-ca-dir: NAMESPACE/NAME of the \
                     peers' ServiceAccount, the only one whose tokens get certificates"
                        .into(),
                );
                None
            }
        };
        let daemonset = match self.issuer_daemonset {
            Some(d) if dns_subdomain(&d) => Some(d),
            Some(d) => {
                errors.push(format!("--issuer-daemonset: {d:?} is not a DaemonSet name"));
                None
            }
            None => {
                errors.push(
                    "--issuer-daemonset is required with --issuer-ca-dir: the peer DaemonSet, whose \
                     pods alone get certificates"
                        .into(),
                );
                None
            }
        };
        let url = match self.kube_api_url {
            Some(u) => Some(u),
            None => match (
                std::env::var("KUBERNETES_SERVICE_HOST"),
                std::env::var("KUBERNETES_SERVICE_PORT"),
            ) {
                (Ok(host), Ok(port)) if host.contains(':') => {
                    Some(format!("https://[{host}]:{port}"))
                }
                (Ok(host), Ok(port)) => Some(format!("https://{host}:{port}")),
                _ => {
                    errors.push(
                        "--kube-api-url: not running in a cluster (KUBERNETES_SERVICE_HOST and \
                         KUBERNETES_SERVICE_PORT unset); give the API server's https:// URL"
                            .into(),
                    );
                    None
                }
            },
        };
        if let Some(u) = &url
            && !u.starts_with("https://")
        {
            errors.push(format!("--kube-api-url: {u:?} must be an https:// URL"));
        }
        if errors.len() > before {
            return None;
        }
        let (namespace, service_account) = account?;
        Some(IssuerSettings {
            listen: listen?,
            ca_dir,
            lifetime: lifetime?,
            policy: ReviewPolicy {
                audience,
                namespace,
                service_account,
                daemonset: daemonset?,
            },
            kube: KubeApiConfig {
                url: url?,
                token_file: self
                    .kube_token_file
                    .unwrap_or_else(|| PathBuf::from(SA_DIR).join("token")),
                ca_file: self
                    .kube_ca_file
                    .unwrap_or_else(|| PathBuf::from(SA_DIR).join("ca.crt")),
                timeout: Duration::from_secs(10),
            },
            limits: IssuerLimits::default(),
        })
    }
}

/// A DNS label (a namespace): 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS subdomain (most object names): labels joined by dots, at most 253.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(mut extra: IssuerArgs) -> IssuerArgs {
        extra.issuer_ca_dir = Some("/ca".into());
        extra
            .kube_api_url
            .get_or_insert_with(|| "https://10.0.0.1:443".into());
        extra
    }

    #[test]
    fn off_without_a_ca_dir() {
        let mut errors = Vec::new();
        assert!(IssuerArgs::default().resolve(false, &mut errors).is_none());
        assert!(errors.is_empty());
    }

    #[test]
    fn defaults_and_every_error_at_once() {
        let mut errors = Vec::new();
        let s = on(IssuerArgs {
            issuer_service_account: Some("shoal/shoal-peer".into()),
            issuer_daemonset: Some("shoal-peer".into()),
            ..IssuerArgs::default()
        })
        .resolve(true, &mut errors)
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.listen, "[::]:7601".parse().unwrap());
        assert_eq!(s.lifetime, Duration::from_secs(86_400));
        assert_eq!(
            s.policy.username(),
            "system:serviceaccount:shoal:shoal-peer"
        );
        assert_eq!(s.policy.audience, "shoal-issuer");
        assert!(s.kube.token_file.ends_with("serviceaccount/token"));

        let mut errors = Vec::new();
        let bad = on(IssuerArgs {
            issuer_cert_lifetime: Some("5s".into()),
            issuer_service_account: Some("shoal-peer".into()),
            kube_api_url: Some("http://10.0.0.1".into()),
            ..IssuerArgs::default()
        });
        assert!(bad.resolve(false, &mut errors).is_none());
        assert_eq!(errors.len(), 5, "{errors:?}");
        for want in [
            "--tls-dir",
            "--issuer-cert-lifetime",
            "--issuer-service-account",
            "--issuer-daemonset",
            "https://",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{want}: {errors:?}"
            );
        }
    }
}
