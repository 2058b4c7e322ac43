//! Listening sockets as both binaries open them, and IP literals in URLs.
//!
//! [`bind_udp`] and [`bind_tcp`] take the address a flag gave. The unspecified IPv6
//! address (`[::]:PORT`, the default of every listener that is not loopback-only) is
//! bound as a dual-stack socket (`IPV6_V6ONLY` off, so IPv4 clients reach it as
//! `::ffff:a.b.c.d`) where the OS allows it; when IPv6 is unavailable (a kernel booted
//! with `ipv6.disable=1`, a namespace without it) the same port is bound on `0.0.0.0`
//! instead. Any other address is bound as given.
//!
//! [`url_ip_host`] is for TLS clients that take the server name from a URL's host:
//! an IPv6 literal comes out of a URL in brackets (`[fd00::1]`), which is not a valid
//! server name.
//!
//! A TCP listener has `TCP_NODELAY` set, and every connection it accepts inherits it
//! (Linux copies the listener's options into the accepted socket): gRPC and HTTP
//! answers are small frames written one after another, and with Nagle on the next
//! one waits for the client's delayed ACK of the last, up to 40 ms
//! (docs/benchmarks.md, "Nagle's algorithm"). Both binaries bind every TCP listener
//! here, so this is the one place that says it.
//!
//! Not here: which address to advertise (the peer's configuration), anything after
//! `bind`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of TCP listeners (what tokio's `TcpListener::bind` uses).
const BACKLOG: i32 = 1024;

/// How a listener was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// As asked: a specific address, or `0.0.0.0`.
    AsGiven,
    /// `[::]` with IPv4 too (`IPV6_V6ONLY` off).
    DualStack,
    /// `[::]`, IPv6 only: the OS refused to turn `IPV6_V6ONLY` off.
    Ipv6Only,
    /// `[::]` was asked but IPv6 is unavailable here: bound on `0.0.0.0`.
    Ipv4Fallback,
}

/// Whether `addr` is `[::]:port`, the address bound dual-stack.
fn is_v6_unspecified(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V6(ip) if ip == Ipv6Addr::UNSPECIFIED)
}

/// Whether an error binding `[::]` means "no IPv6 here" (worth trying `0.0.0.0`) rather
/// than a problem with the port, which IPv4 would have too.
fn is_no_ipv6(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

/// Opens a socket of `ty` bound to `addr` (dual-stack for `[::]`), then `setup` (e.g.
/// `listen`), with the IPv4 fallback described in the module docs.
fn bind(
    addr: SocketAddr,
    ty: Type,
    protocol: Protocol,
    setup: impl Fn(&Socket) -> io::Result<()>,
) -> io::Result<(Socket, Stack)> {
    let open = |addr: SocketAddr, dual: bool| -> io::Result<(Socket, Stack)> {
        let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
        if ty == Type::STREAM {
            // As tokio and std do on Unix: a restarted server gets its port back while
            // old connections linger in TIME_WAIT.
            socket.set_reuse_address(true)?;
            socket.set_tcp_nodelay(true)?;
        }
        let stack = if dual {
            match socket.set_only_v6(false) {
                Ok(()) => Stack::DualStack,
                Err(_) => Stack::Ipv6Only,
            }
        } else {
            Stack::AsGiven
        };
        socket.bind(&addr.into())?;
        setup(&socket)?;
        socket.set_nonblocking(true)?;
        Ok((socket, stack))
    };
    if !is_v6_unspecified(addr) {
        return open(addr, false);
    }
    match open(addr, true) {
        Ok(bound) => Ok(bound),
        Err(e) if is_no_ipv6(&e) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            open(v4, false)
                .map(|(s, _)| (s, Stack::Ipv4Fallback))
                .map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// A UDP socket bound to `addr`, non-blocking (the module docs say how `[::]` is
/// bound), and how.
pub fn bind_udp(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, Stack)> {
    bind(addr, Type::DGRAM, Protocol::UDP, |_| Ok(())).map(|(s, stack)| (s.into(), stack))
}

/// A TCP listener bound to `addr`, listening and non-blocking (ready for
/// `tokio::net::TcpListener::from_std`; the module docs say how `[::]` is bound), and
/// how.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<(std::net::TcpListener, Stack)> {
    bind(addr, Type::STREAM, Protocol::TCP, |s| s.listen(BACKLOG))
        .map(|(s, stack)| (s.into(), stack))
}

/// The IP literal of a URL's host as a TLS server name takes it: `fd00::1` for
/// `https://[fd00::1]:7600`, `10.0.0.1` for `https://10.0.0.1:7600`; `None` for a DNS
/// name (use the host as it is) or a string that is not a URL.
pub fn url_ip_host(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(bracketed) = host_port.strip_prefix('[') {
        return bracketed
            .split_once(']')?
            .0
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    let host = host_port.split(':').next()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv6_here() -> bool {
        std::net::UdpSocket::bind("[::1]:0").is_ok()
    }

    #[test]
    fn unspecified_ipv6_is_dual_stack_and_reaches_ipv4_clients() {
        let (listener, stack) = bind_tcp("[::]:0".parse().unwrap()).unwrap();
        let port = listener.local_addr().unwrap().port();
        if !ipv6_here() {
            assert_eq!(stack, Stack::Ipv4Fallback);
            assert!(listener.local_addr().unwrap().is_ipv4());
            return;
        }
        assert_eq!(stack, Stack::DualStack);
        // Both families connect to the one listener.
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::net::TcpStream::connect(("::1", port)).unwrap();

        let (udp, stack) = bind_udp("[::]:0".parse().unwrap()).unwrap();
        assert_eq!(stack, Stack::DualStack);
        let to = udp.local_addr().unwrap().port();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"hi", ("127.0.0.1", to)).unwrap();
        let mut buf = [0u8; 4];
        udp.set_nonblocking(false).unwrap();
        let (n, from) = udp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(
            from.ip(),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            "an IPv4 client seen as IPv4-mapped"
        );
    }

    #[test]
    fn other_addresses_are_bound_as_given_and_a_taken_port_is_an_error() {
        let (l, stack) = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(stack, Stack::AsGiven);
        let taken = l.local_addr().unwrap();
        let e = bind_tcp(taken).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let (u, stack) = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(stack, Stack::AsGiven);
        assert!(u.local_addr().unwrap().is_ipv4());
    }

    #[test]
    fn accepted_connections_have_nagle_off() {
        let (l, _) = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "inherited from the listener");
        drop(client);
    }

    #[test]
    fn ip_hosts_of_urls() {
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(url_ip_host("https://[fd00::1]:7600"), Some(v6));
        assert_eq!(url_ip_host("https://[fd00::1]/x"), Some(v6));
        assert_eq!(url_ip_host("https://u:p@[fd00::1]:1"), Some(v6));
        assert_eq!(
            url_ip_host("http://10.0.0.1:7600/"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(url_ip_host("https://shoal-scheduler:7600"), None);
        assert_eq!(url_ip_host("https://[nope]:1"), None);
        assert_eq!(url_ip_host("fd00::1"), None);
    }
}
