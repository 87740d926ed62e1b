//! One error type for the controller. The error policy tells permanent
//! errors (wait for a change) from transient ones (retry with backoff).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    #[error("could not serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },

    #[error("the TrainingJob has no namespace")]
    NoNamespace,

    #[error("the namespace is being deleted: no new pods can be created in it")]
    NamespaceTerminating,
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::Serialize { .. } => "serialize",
            Error::NoNamespace => "no_namespace",
            Error::NamespaceTerminating => "namespace_terminating",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
