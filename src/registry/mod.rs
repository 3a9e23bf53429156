//! Registries over the OCI distribution API, without Docker: references, credentials, an HTTP
//! client with auth and retries (`client`), pulling base images into a local blob cache (`pull`)
//! and pushing OCI layouts (`push`).
//!
//! This module is the only one that speaks HTTP. It does not use `oci-client`: galley needs
//! retries honouring `Retry-After`, a 202 answer to a mount treated as "upload here", uploads
//! streamed from files and restarted from their POST, a token refresh on a 401 in the middle of a
//! push, and the exact manifest bytes it hashed sent as they are; oci-client 0.18 has none of the
//! first four, so a small client on reqwest is simpler than wrapping it.

pub mod client;
pub mod credentials;
pub mod doctor;
pub mod pull;
pub mod push;
pub mod reference;
pub mod retry;
pub mod tags;

use std::path::PathBuf;
use std::time::Duration;

pub use client::Client;
pub use credentials::{Credential, Secret};
pub use reference::Reference;
pub use retry::RetryPolicy;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback hosts always are.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM) for private TLS registries.
    pub ca_bundle: Option<PathBuf>,
    /// Credentials given on the command line; when absent, Docker's config.json is read.
    pub credential: Option<Credential>,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// Stops every request, upload and retry wait of the build it belongs to.
    pub cancel: crate::cancel::Cancel,
}

/// How long a registry may take, sized per kind of call: metadata (pings, tokens, manifests,
/// tag lists, upload sessions) answers in seconds; a blob gets as long as it takes at the
/// slowest rate still called progress (reqwest's blocking client has no per-read timeout).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Connecting (TCP and TLS).
    pub connect: Duration,
    /// A metadata request from start to its whole answer.
    pub metadata: Duration,
    /// Bytes per second below which a blob transfer is given up on (as git's lowSpeedLimit).
    pub min_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            metadata: Duration::from_secs(60),
            min_rate: 64 << 10,
        }
    }
}

impl Timeouts {
    /// For a question asked while someone waits (the service's API): a few seconds.
    pub fn interactive() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            metadata: Duration::from_secs(10),
            ..Timeouts::default()
        }
    }
}

impl RegistryOptions {
    /// Whether `registry` is spoken to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(registry);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || host.starts_with("127.")
            || self.insecure.iter().any(|i| i == registry)
    }

    /// The credential for a registry: the explicit one, else Docker's config.
    pub fn credential_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credential>, credentials::CredentialError> {
        match &self.credential {
            Some(c) => Ok(Some(c.clone())),
            None => credentials::from_docker_config(registry),
        }
    }
}

/// Registry failures. Every message names the registry, and where it applies the repository,
/// the step and the registry's error code; none contains a credential or token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}/{repository}: {step} failed: HTTP {status} ({code}: {message})")]
    Status {
        registry: String,
        repository: String,
        step: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{registry}/{repository}: {step} failed after {attempts} tries: {detail}")]
    Transport {
        registry: String,
        repository: String,
        step: String,
        attempts: u32,
        detail: String,
    },
    #[error("{registry}: authentication failed: {detail}")]
    Auth { registry: String, detail: String },
    #[error(transparent)]
    Credential(#[from] credentials::CredentialError),
    #[error("{registry}/{repository}: {what}")]
    Invalid {
        registry: String,
        repository: String,
        what: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("local blob store: {0}")]
    Layout(#[from] crate::oci::layout::LayoutError),
    #[error("local blob store: {what} {digest}: {source}")]
    Document {
        what: &'static str,
        digest: crate::oci::Digest,
        source: serde_json::Error,
    },
    #[error("local blob store: {0}")]
    Json(#[from] crate::oci::json::JsonError),
    #[error("local blob store: cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{registry}: {step} stopped: {reason}")]
    Cancelled {
        registry: String,
        step: String,
        reason: String,
    },
}
