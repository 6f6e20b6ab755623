//! RFC 7807 problem details, as the KBS sends them and the client reads them.

use serde::{Deserialize, Serialize};

/// Prefix of every problem `type` URI.
pub const TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

/// An `application/problem+json` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// URI naming the kind of error (`…/errors/AttestationFailed`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    #[serde(default)]
    pub title: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What exactly failed.
    pub detail: String,
}

impl Problem {
    /// A problem of kind `kind` (appended to [`TYPE_PREFIX`]).
    pub fn new(status: u16, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{TYPE_PREFIX}{kind}"),
            title: kind.to_owned(),
            status,
            detail: detail.into(),
        }
    }
}
