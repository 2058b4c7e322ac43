"""The chart's address families (values ipFamilies, ipFamilyPolicy) as
check_rendered.py checks them: every listener that is not loopback-only binds
the scenario's wildcard ([::], or 0.0.0.0 with ipFamilies [IPv4]), every Service
carries the scenario's ipFamilies and policy, and the peer reads every hosts dir
of the preset in containerd's order.
"""

from checks import container, find, flags


def wildcard(sc):
    """What the listeners must bind in scenario `sc`."""
    return "0.0.0.0" if sc.ip_families == ["IPv4"] else "[::]"


def policy(sc):
    if sc.ip_family_policy:
        return sc.ip_family_policy
    n = len(sc.ip_families)
    return {0: None, 1: "SingleStack"}.get(n, "PreferDualStack")


def check_listen(fl, name, want, problems, where):
    for v in fl.get(name) or []:
        host = v.rsplit(":", 1)[0]
        if host != want:
            problems.append(f"{where}: {name}={v} does not bind {want} (ipFamilies)")


def check_ip_families(docs, sc, problems):
    want = wildcard(sc)
    for ds in find(docs, "DaemonSet", "peer", hook=False):
        peer = container(ds["spec"]["template"]["spec"], "peer")
        fl = flags(peer.get("args"))
        for name in ("--quic-listen", "--http-listen"):
            check_listen(fl, name, want, problems, "peer")
        hd = (fl.get("--containerd-hosts-dir") or [None])[0]
        if sc.runtime == "containerd" and hd != ":".join(sc.hosts):
            problems.append(f"peer: --containerd-hosts-dir={hd}, expected every hosts dir of the preset "
                            f"in order: {':'.join(sc.hosts)}")
    for d in find(docs, "Deployment", "scheduler"):
        sched = container(d["spec"]["template"]["spec"], "scheduler")
        fl = flags(sched.get("args"))
        for name in ("--grpc-listen", "--http-listen", "--issuer-listen"):
            check_listen(fl, name, want, problems, "scheduler")
    for svc in find(docs, "Service"):
        spec, name = svc["spec"], svc["metadata"]["name"]
        if spec.get("ipFamilies", []) != sc.ip_families:
            problems.append(f"Service {name}: ipFamilies {spec.get('ipFamilies')}, values say {sc.ip_families}")
        if spec.get("ipFamilyPolicy") != policy(sc):
            problems.append(f"Service {name}: ipFamilyPolicy {spec.get('ipFamilyPolicy')}, expected {policy(sc)}")


def ip_family_mutations():
    """(what, function that breaks a rendering in place) for self_test.py."""
    def peer(docs):
        return container(find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"], "peer")

    def set_arg(c, flag, value):
        c["args"] = [f"{flag}={value}" if a.startswith(flag + "=") else a for a in c["args"]]

    def sched(docs):
        return container(find(docs, "Deployment", "scheduler")[0]["spec"]["template"]["spec"], "scheduler")

    def drop_families(docs):
        for s in find(docs, "Service"):
            s["spec"].pop("ipFamilies", None)
            s["spec"]["ipFamilies"] = ["IPv4"]

    return [
        ("the peer reads only the first hosts dir",
         lambda d: set_arg(peer(d), "--containerd-hosts-dir",
                           next(a for a in peer(d)["args"] if a.startswith("--containerd-hosts-dir="))
                           .split("=", 1)[1].split(":")[0] + ":/elsewhere")),
        ("the peer's QUIC server binds an IPv4 wildcard on an IPv6 cluster",
         lambda d: set_arg(peer(d), "--quic-listen", "0.0.0.0:7651")),
        ("the scheduler's gRPC binds an IPv4 wildcard on an IPv6 cluster",
         lambda d: set_arg(sched(d), "--grpc-listen", "0.0.0.0:7600")),
        ("Services of another family than the values'", drop_families),
    ]
