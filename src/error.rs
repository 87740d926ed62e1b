//! One error type for the controller. The error policy tells permanent
//! errors (wait for a change) from transient ones (retry with backoff).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    #[error("the TrainingJob has no namespace")]
    NoNamespace,

    #[error("the namespace is being deleted: no new pods can be created in it")]
    NamespaceTerminating,

    /// Cannot happen unless serde fails to read what it wrote; a change to
    /// the job replaces the cached copy.
    #[error("the operator's cached copy of the job's template does not parse: {0}")]
    CachedTemplate(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::NoNamespace => "no_namespace",
            Error::NamespaceTerminating => "namespace_terminating",
            Error::CachedTemplate(_) => "cached_template",
        }
    }

    /// Nothing will change by retrying: wait for the object to change.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::NoNamespace | Error::CachedTemplate(_))
    }
}

/// The API server's answer to a create in a namespace being deleted.
pub fn namespace_terminating(e: &kube::core::Status) -> bool {
    e.code == 403 && e.message.contains("being terminated")
}

/// Whether the answer is a 404: the object is gone already.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
