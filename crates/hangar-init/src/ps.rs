//! Process listing from `/proc` as seen inside the machine.

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::proto::ProcInfo;

/// Every process visible in `/proc`, with its listening TCP sockets.
pub fn list() -> Vec<ProcInfo> {
    let page = {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 { p as u64 } else { 4096 }
    };
    let mut listeners: HashMap<u64, (String, String)> = HashMap::new();
    for (file, proto) in [("/proc/net/tcp", "tcp"), ("/proc/net/tcp6", "tcp6")] {
        if let Ok(text) = fs::read_to_string(file) {
            for (inode, addr) in parse_listeners(&text) {
                listeners.insert(inode, (proto.to_string(), addr));
            }
        }
    }
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let base = format!("/proc/{pid}");
        let Ok(stat) = fs::read_to_string(format!("{base}/stat")) else {
            continue;
        };
        let Some((comm, fields)) = parse_stat(&stat) else {
            continue;
        };
        let cmdline = fs::read(format!("{base}/cmdline")).unwrap_or_default();
        let command = if cmdline.is_empty() {
            format!("[{comm}]")
        } else {
            cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut listen_sockets = Vec::new();
        if !listeners.is_empty()
            && let Ok(fds) = fs::read_dir(format!("{base}/fd"))
        {
            for fd in fds.flatten() {
                let Ok(target) = fs::read_link(fd.path()) else {
                    continue;
                };
                let target = target.to_string_lossy();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                    && let Some(l) = listeners.get(&inode)
                    && !listen_sockets.contains(l)
                {
                    listen_sockets.push(l.clone());
                }
            }
        }
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push(ProcInfo {
            pid,
            // Fields after the command, numbered from `state` (field 3) as 0.
            ppid: field(1) as i32,
            command,
            cwd: fs::read_link(format!("{base}/cwd"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            utime_ticks: field(11),
            stime_ticks: field(12),
            rss_bytes: field(21) * page,
            listen_sockets,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Splits `/proc/PID/stat` into the command name and the fields after it.
fn parse_stat(stat: &str) -> Option<(&str, Vec<&str>)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    Some((comm, stat.get(close + 1..)?.split_whitespace().collect()))
}

/// `(inode, "addr:port")` of each listening socket in `/proc/net/tcp{,6}` text.
fn parse_listeners(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (addr, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = match addr.len() {
                8 => Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes()).to_string(),
                32 => {
                    let mut bytes = [0u8; 16];
                    for i in 0..4 {
                        let word = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.swap_bytes().to_be_bytes());
                    }
                    format!("[{}]", Ipv6Addr::from(bytes))
                }
                _ => return None,
            };
            Some((f[9].parse().ok()?, format!("{ip}:{port}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:9999 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            parse_listeners(tcp),
            vec![(12345, "127.0.0.1:8080".to_string())]
        );
        let tcp6 = "header\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        assert_eq!(parse_listeners(tcp6), vec![(777, "[::1]:80".to_string())]);
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let (comm, f) = parse_stat("42 (a b) c) S 1 42 42 0").unwrap();
        assert_eq!(comm, "a b) c");
        assert_eq!(f[1], "1");
    }

    #[test]
    fn lists_ourselves() {
        let me = std::process::id() as i32;
        assert!(list().iter().any(|p| p.pid == me));
    }
}
