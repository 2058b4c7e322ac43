//! The node's link rate, which the peer declares when it joins: the scheduler
//! prefers the fastest downloader of a task as its back-to-source peer, since the
//! whole swarm receives at most at that peer's rate.
//!
//! `--link-rate` is `auto` (the default: the speed the kernel reports for the
//! interface holding the advertised address, `/sys/class/net/IF/speed`),
//! `unknown` (declare none), or a rate such as `25gbit` or `1000mbit`.

use std::net::IpAddr;
use std::path::Path;

/// The highest rate accepted, in Mbit/s (10 Tbit/s; the scheduler refuses more).
const MAX_MBPS: u64 = 10_000_000;

/// What `--link-rate` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRate {
    /// Read the advertised interface's speed at start.
    Auto,
    /// This many Mbit/s (0: unknown).
    Mbps(u32),
}

impl LinkRate {
    /// Parses `auto`, `unknown`, or a whole number with `mbit` or `gbit`
    /// (case-insensitive, an optional `/s`).
    pub fn parse(s: &str) -> Result<LinkRate, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => return Ok(LinkRate::Auto),
            "unknown" => return Ok(LinkRate::Mbps(0)),
            _ => {}
        }
        let t = t.strip_suffix("/s").unwrap_or(&t);
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("{s:?} is not auto, unknown, or a rate like 25gbit or 1000mbit");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult = match unit.trim() {
            "mbit" => 1,
            "gbit" => 1000,
            _ => return Err(bad()),
        };
        match n.checked_mul(mult) {
            Some(0) => Err(format!("{s:?}: a link rate is above 0 (or `unknown`)")),
            Some(m) if m <= MAX_MBPS => Ok(LinkRate::Mbps(m as u32)),
            _ => Err(format!("{s:?} is above 10 Tbit/s")),
        }
    }

    /// The rate to declare, in Mbit/s (0: unknown). `Auto` reads the speed of
    /// the interface that holds `ip`.
    pub fn resolve(self, ip: IpAddr) -> u32 {
        match self {
            LinkRate::Mbps(m) => m,
            LinkRate::Auto => interface_of(ip)
                .and_then(|name| interface_speed(Path::new("/sys/class/net"), &name))
                .unwrap_or(0),
        }
    }
}

/// The name of the interface holding `ip`, if any.
fn interface_of(ip: IpAddr) -> Option<String> {
    if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find(|a| a.ip() == ip)
        .map(|a| a.name)
}

/// `SYS/NAME/speed` in Mbit/s; `None` when missing, or when the driver does not
/// know (-1, 0, or an absurd value such as `u32::MAX`).
fn interface_speed(sys: &Path, name: &str) -> Option<u32> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(sys.join(name).join("speed")).ok()?;
    let n: i64 = text.trim().parse().ok()?;
    (1..=MAX_MBPS as i64).contains(&n).then_some(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_mbit_and_gbit() {
        assert_eq!(LinkRate::parse("auto"), Ok(LinkRate::Auto));
        assert_eq!(LinkRate::parse("unknown"), Ok(LinkRate::Mbps(0)));
        assert_eq!(LinkRate::parse("25gbit"), Ok(LinkRate::Mbps(25_000)));
        assert_eq!(LinkRate::parse("25Gbit/s"), Ok(LinkRate::Mbps(25_000)));
        assert_eq!(LinkRate::parse(" 1000mbit "), Ok(LinkRate::Mbps(1000)));
        for bad in [
            "",
            "fast",
            "10",
            "10gb",
            "0mbit",
            "-1mbit",
            "20000gbit",
            "1.5gbit",
        ] {
            let e = LinkRate::parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn an_interface_speed_is_read_and_unknown_speeds_are_none() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("eth0", "25000\n"),
            ("veth1", "-1\n"),
            ("wg0", "4294967295\n"),
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("speed"), text).unwrap();
        }
        assert_eq!(interface_speed(dir.path(), "eth0"), Some(25_000));
        assert_eq!(interface_speed(dir.path(), "veth1"), None);
        assert_eq!(interface_speed(dir.path(), "wg0"), None);
        assert_eq!(interface_speed(dir.path(), "missing"), None);
        assert_eq!(interface_speed(dir.path(), "../eth0"), None);
    }

    #[test]
    fn a_declared_rate_is_used_as_it_is() {
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert_eq!(LinkRate::Mbps(1000).resolve(ip), 1000);
        assert_eq!(LinkRate::Mbps(0).resolve(ip), 0);
        // No interface holds a documentation address: unknown.
        assert_eq!(LinkRate::Auto.resolve(ip), 0);
    }
}
