//! Identifiers: machine ids (14 lowercase hex digits, as Fly's) and instance ids.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A machine's id: 14 lowercase hex digits. Also its hostname and cgroup name, so it
/// is restricted to characters that are safe in paths and DNS labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

impl MachineId {
    pub const LEN: usize = 14;

    pub fn generate() -> Self {
        let n: u64 = rand::thread_rng().r#gen();
        MachineId(format!("{:014x}", n & 0x00ff_ffff_ffff_ffff))
    }

    /// Parses an id, refusing anything that is not exactly 14 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| MachineId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MachineId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        MachineId::parse(&s).ok_or_else(|| format!("{s:?} is not a machine id (14 hex digits)"))
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

/// A new instance id: 26 Crockford base32 characters, time-ordered like a ULID.
/// A machine gets a new one on every update.
pub fn instance_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let millis = chrono::Utc::now().timestamp_millis() as u128;
    let random: u128 = rand::thread_rng().r#gen::<u128>() & ((1u128 << 80) - 1);
    let mut value = (millis << 80) | random;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    String::from_utf8(out.to_vec()).expect("alphabet is ASCII")
}

/// A random lowercase hex token of `bytes` bytes (lease nonces, event ids).
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse() {
        for _ in 0..1000 {
            let id = MachineId::generate();
            assert_eq!(MachineId::parse(id.as_str()), Some(id));
        }
    }

    #[test]
    fn hostile_ids_are_refused() {
        for bad in [
            "",
            "../../etc/pass",
            "ABCDEF01234567",
            "0123456789abc",
            "0123456789abcde",
            "0123456789abc/",
        ] {
            assert_eq!(MachineId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn instance_ids_are_ordered_and_distinct() {
        let a = instance_id();
        let b = instance_id();
        assert_eq!(a.len(), 26);
        assert_ne!(a, b);
    }
}
