//! Access keys as the API shows them (`/api/v1/keys`): an id and a secret
//! lampyr issues for clients that sign their requests the AWS way (SigV4).

use serde::{Deserialize, Serialize};

/// A key as listed: no secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A key just issued, with its secret (shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    pub secret: String,
}
