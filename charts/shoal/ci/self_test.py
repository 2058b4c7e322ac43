"""The self-test of the checks: breaks a good rendering in ways that matter and
requires every break to be reported, so that the checks cannot pass everything
silently. Each mutation is one thing a careless template change could do.
"""

import copy

from checks import check_all, container, find, mount_at, volume


def mutations():
    """(what, function that breaks the default rendering in place)."""
    def peer_pod(docs):
        return find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"]

    def set_arg(c, flag, value):
        c["args"] = [f"{flag}={value}" if a.startswith(flag + "=") else a for a in c["args"]]

    def first_hosts_volume(pod):
        return next(v for v in pod["volumes"] if v["name"].startswith("hosts-"))

    def swap_cert(docs):
        s = next(d for d in find(docs, "Secret") if d["type"] == "kubernetes.io/tls")
        s["data"]["tls.crt"] = s["data"]["ca.crt"]  # a certificate without the name

    return [
        ("mirror URL differs from the listen address",
         lambda d: set_arg(container(peer_pod(d), "configure", True), "--mirror-url", "http://127.0.0.1:7651")),
        ("mirror listens on a wildcard address",
         lambda d: set_arg(container(peer_pod(d), "peer"), "--mirror-listen", "0.0.0.0:7650")),
        ("hosts dir mounted from another host path",
         lambda d: first_hosts_volume(peer_pod(d))["hostPath"].update(path="/etc/containerd/certs")),
        ("peer's hosts dir mounted elsewhere",
         lambda d: mount_at(container(peer_pod(d), "peer"), "/etc/containerd/certs.d").update(mountPath="/certs.d")),
        ("configure writes through a writable root file system",
         lambda d: container(peer_pod(d), "configure", True)["securityContext"].update(readOnlyRootFilesystem=False)),
        ("configure reads another containerd config",
         lambda d: set_arg(container(peer_pod(d), "configure", True), "--containerd-config", "/etc/containerd/c.toml")),
        ("--peer-tls-dir is not where the Secret is mounted",
         lambda d: set_arg(container(peer_pod(d), "peer"), "--peer-tls-dir", "/etc/shoal/tls")),
        ("peer runs with the development-only throw-away CA",
         lambda d: container(peer_pod(d), "peer")["args"].append("--dev-ephemeral-tls")),
        ("Secret key mounted under the wrong file name",
         lambda d: volume(peer_pod(d), "peer-tls")["secret"]["items"][1].update(path="cert.pem")),
        ("certificate without the DNS name shoal-peer", swap_cert),
        ("readiness probe on another port",
         lambda d: container(peer_pod(d), "peer")["readinessProbe"]["httpGet"].update(port=9999)),
        ("restore runs against other mounts",
         lambda d: find(d, "DaemonSet", "restore")[0]["spec"]["template"]["spec"]["initContainers"][0]
         ["volumeMounts"].pop()),
        ("scheduler token file outside its Secret",
         lambda d: set_arg(container(find(d, "Deployment", "scheduler")[0]["spec"]["template"]["spec"], "scheduler"),
                           "--operator-token-file", "/etc/token")),
        ("peers dial a port the scheduler does not listen on",
         lambda d: set_arg(container(peer_pod(d), "peer"), "--scheduler",
                           "http://shoal-scheduler.shoal-system.svc.cluster.local:7601")),
    ]


def everything_on_mutations():
    """Breaks of the optional parts, applied to the everything-on rendering."""
    def monitor(docs, component):
        return find(docs, "ServiceMonitor", component)[0]

    return [
        ("ServiceMonitor scrapes the scheduler through its headless Service too",
         lambda d: monitor(d, "scheduler")["spec"]["selector"].pop("matchExpressions")),
        ("ServiceMonitor scrapes a port the Service does not have",
         lambda d: monitor(d, "peer")["spec"]["endpoints"][0].update(port="metrics")),
    ]


def self_test(docs, sc, cases=None):
    failures = []
    if check_all(docs, sc):
        failures.append("the unbroken rendering itself has problems")
    for what, breaks in cases or mutations():
        broken = copy.deepcopy(docs)
        breaks(broken)
        found = check_all(broken, sc)
        if not found:
            failures.append(f"not detected: {what}")
        else:
            print(f"  detected: {what}: {found[0]}")
    return failures
