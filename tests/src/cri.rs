//! A client of the Kubernetes CRI image service (`runtime.v1.ImageService`) over
//! containerd's Unix socket: gRPC on a Unix stream, as the kubelet speaks it to
//! `unix:///run/containerd/containerd.sock`. The calls are the kubelet's for images:
//! `PullImage` with the credentials of a pod's `imagePullSecrets` in
//! `PullImageRequest.auth` (username and password, the Docker config's `auth`, or a
//! registry token), `ImageStatus`, `ListImages` and `RemoveImage`.
//!
//! The messages come from `proto/runtime/v1/api.proto`, the image half of the CRI
//! definition (compiled by `build.rs`). containerd serves the service only when its
//! CRI plugin is loaded: see [`crate::containerd::Containerd::start_cri`]. Pulls made
//! here land in containerd's `k8s.io` namespace and are unpacked into the CRI
//! plugin's snapshotter, exactly as for a pod's image.
//!
//! Not here: the runtime service (sandboxes, containers), `PullImageRequest`'s
//! `sandbox_config` (containerd 1.6 does not use it to pull).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated `runtime.v1` messages and client.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod runtime_v1 {
    tonic::include_proto!("runtime.v1");
}

use runtime_v1::image_service_client::ImageServiceClient;
pub use runtime_v1::{AuthConfig, Image};
use runtime_v1::{
    ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};

/// How long one call may take before the client gives up: a bound on a hang (a pull
/// of a few MiB on loopback takes seconds), not a timing assertion.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// `PullImageRequest.auth` for a username and password, as the kubelet fills it from a
/// `kubernetes.io/dockerconfigjson` secret. No `server_address`: the kubelet leaves it
/// empty, and containerd then offers the credentials to whichever host of the
/// registry's `hosts.toml` asks for them (the mirror first).
pub fn basic_auth(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        username: username.to_owned(),
        password: password.to_owned(),
        ..AuthConfig::default()
    }
}

/// `PullImageRequest.auth` with only the Docker config's `auth` field: base64 of
/// `username:password`.
pub fn docker_config_auth(username: &str, password: &str) -> AuthConfig {
    AuthConfig {
        auth: base64(format!("{username}:{password}").as_bytes()),
        ..AuthConfig::default()
    }
}

/// `PullImageRequest.auth` with a bearer token for the registry (`registry_token`),
/// which containerd sends as `Authorization: Bearer <token>`.
pub fn token_auth(token: &str) -> AuthConfig {
    AuthConfig {
        registry_token: token.to_owned(),
        ..AuthConfig::default()
    }
}

/// Standard base64 with padding (RFC 4648), for [`docker_config_auth`].
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A connection to one containerd's CRI image service.
#[derive(Debug, Clone)]
pub struct CriClient {
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
}

impl CriClient {
    /// Connects to the gRPC socket `socket` and checks that the image service answers
    /// (`ListImages`); an error says so when containerd runs without its CRI plugin.
    pub async fn connect(socket: &Path) -> anyhow::Result<Self> {
        let path = socket.to_path_buf();
        // The URI only fills the `:authority` header: the connector dials the socket.
        let channel = Endpoint::try_from("http://localhost")?
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut client = CriClient {
            images: ImageServiceClient::new(channel),
            socket: socket.to_path_buf(),
        };
        client.list_images().await.with_context(|| {
            format!(
                "runtime.v1.ImageService at {} (is containerd's CRI plugin loaded?)",
                socket.display()
            )
        })?;
        Ok(client)
    }

    /// The socket it talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PullImage` of `image` (`registry/repo:tag` or `…@sha256:…`) with `auth`, as
    /// the kubelet sends it; the image reference containerd answers (its image ID, the
    /// digest of the image's config).
    pub async fn pull_image(
        &mut self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let request = PullImageRequest {
            image: Some(spec(image)),
            auth,
        };
        Ok(self
            .images
            .pull_image(request)
            .await?
            .into_inner()
            .image_ref)
    }

    /// `ImageStatus`: the image when containerd has it, `None` when it does not.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<Image>, tonic::Status> {
        let request = ImageStatusRequest {
            image: Some(spec(image)),
            verbose: false,
        };
        Ok(self.images.image_status(request).await?.into_inner().image)
    }

    /// `ListImages` without a filter.
    pub async fn list_images(&mut self) -> Result<Vec<Image>, tonic::Status> {
        let request = ListImagesRequest { filter: None };
        Ok(self.images.list_images(request).await?.into_inner().images)
    }

    /// `RemoveImage` (idempotent: removing an image that is not there succeeds).
    pub async fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        let request = RemoveImageRequest {
            image: Some(spec(image)),
        };
        self.images.remove_image(request).await?;
        Ok(())
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        annotations: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(docker_config_auth("u", "p:w").auth, "dTpwOnc=");
    }
}
