//! Wire types of the private network: an app's egress policy.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an app's machines may reach outside the private network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Anything (the default).
    #[default]
    Allow,
    /// Nothing outside the org's private network and hangar's DNS.
    Deny,
    /// Only the CIDRs and domain names in `allow`.
    Allowlist,
}

/// `GET/PUT /v1/apps/{app}/egress` (a hangar addition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressPolicy {
    pub policy: EgressMode,
    /// With `allowlist`: CIDRs (`1.2.3.0/24`, `2001:db8::/32`), addresses, or domain
    /// names (`example.com`, which also allows its subdomains).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}
