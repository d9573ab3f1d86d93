//! Resolves `user`, `uid`, `user:group`, `uid:gid` with the machine's own
//! `/etc/passwd` and `/etc/group` (no NSS: the image may have no libc at all).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary one included.
    pub groups: Vec<u32>,
    pub home: String,
    pub name: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry> + '_ {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// `(name, gid, members)` of each group.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> + '_ {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` against the files under `root` (`/` in a machine).
pub fn resolve(spec: &str, root: &Path) -> Result<Identity, String> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve_with(spec, &passwd, &group)
}

pub fn resolve_with(spec: &str, passwd: &str, group: &str) -> Result<Identity, String> {
    let spec = spec.trim();
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = passwd_entries(passwd).find(|e| e.name == user || e.uid.to_string() == user);
    let (uid, mut gid, home, name) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home, Some(e.name)),
        // A numeric uid needs no entry; it gets group 0 like other runtimes give it.
        (None, Ok(uid)) => (uid, 0, "/".to_string(), None),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ));
        }
    };
    if let Some(g) = grp {
        gid = match group_entries(group).find(|(n, id, _)| *n == g || id.to_string() == g) {
            Some((_, id, _)) => id,
            None => g.parse().map_err(|_| {
                format!("unable to find group {g}: no matching entries in group file")
            })?,
        };
    }
    let mut groups = vec![gid];
    if grp.is_none()
        && let Some(n) = &name
    {
        for (_, id, members) in group_entries(group) {
            if members.contains(&n.as_str()) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home: if home.is_empty() { "/".into() } else { home },
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\nstaff:x:50:\n";

    #[test]
    fn resolves_the_usual_forms() {
        let root = resolve_with("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let app = resolve_with("app", PASSWD, GROUP).unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.groups, vec![1000, 10]);
        let by_uid = resolve_with("1000", PASSWD, GROUP).unwrap();
        assert_eq!(by_uid.name.as_deref(), Some("app"));
        let with_group = resolve_with("app:staff", PASSWD, GROUP).unwrap();
        assert_eq!((with_group.gid, with_group.groups), (50, vec![50]));
        let numeric = resolve_with("4242:4343", PASSWD, GROUP).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (4242, 4343));
        let unknown_uid = resolve_with("4242", "", "").unwrap();
        assert_eq!((unknown_uid.uid, unknown_uid.gid), (4242, 0));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve_with("nobody", PASSWD, GROUP).is_err());
        assert!(resolve_with("app:nogroup", PASSWD, GROUP).is_err());
        assert!(resolve_with("::", PASSWD, GROUP).is_err());
    }
}
