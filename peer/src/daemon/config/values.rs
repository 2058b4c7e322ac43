//! The value syntaxes of `shoal-peer run`'s settings: sizes, durations, containerd's
//! directory lists, and the node's own address when none is given.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Parses `10GiB`, `500MiB`, `64KiB`, `1024` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 10GiB or 500MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use B, KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `--upload-rate-limit` (bytes per second, `200MiB`); zero is refused (an
/// unset limit means none).
pub(super) fn parse_rate_limit(s: &str) -> Result<std::num::NonZeroU64, String> {
    std::num::NonZeroU64::new(parse_size(s)?)
        .ok_or_else(|| "must be above 0 (leave it unset for no limit)".to_owned())
}

/// Splits containerd's `config_path` (`:`-separated, as Go's `filepath.SplitList`) into
/// its directories, in order; an empty entry is refused (containerd would search the
/// working directory).
pub fn split_hosts_dirs(list: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let dirs: Vec<PathBuf> = std::env::split_paths(list.as_os_str()).collect();
    if dirs.iter().any(|d| d.as_os_str().is_empty()) {
        return Err(format!(
            "{:?} has an empty entry; give directories separated by `:`",
            list.display()
        ));
    }
    Ok(dirs)
}

/// The node's first non-loopback IPv4 address (else IPv6, link-local ones left out:
/// they need a scope other peers cannot know), if any.
pub(super) fn node_ip() -> Option<IpAddr> {
    let addrs = if_addrs::get_if_addrs().ok()?;
    let mut ips: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|a| !a.is_loopback())
        .map(|a| a.ip())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.into_iter().next()
}

/// Parses `30s`, `500ms`, `2m`, `1h` (as the scheduler does).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!(
            "{s:?} is not a duration like 30s, 500ms or 2m (units: ms, s, m, h)"
        )),
    }
}
