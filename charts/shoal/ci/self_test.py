"""The self-test of the checks: breaks a good rendering in ways that matter and
requires every break to be reported, so that the checks cannot pass everything
silently. Each mutation is one thing a careless template change could do.
"""

import base64
import copy
import subprocess

from checks import check_all, container, find, mount_at, volume


def other_ca():
    """A CA certificate (PEM) that signed none of the chart's certificates."""
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", "/dev/null", "-subj", "/CN=Another CA", "-days", "1"],
                       capture_output=True, check=True)
    return r.stdout


def sched_pod(docs):
    return find(docs, "Deployment", "scheduler")[0]["spec"]["template"]["spec"]


def netpol(docs):
    return find(docs, "NetworkPolicy")[0]


def grpc_rule(docs):
    return netpol(docs)["spec"]["ingress"][0]


def secret(docs, suffix):
    return next(d for d in find(docs, "Secret") if d["metadata"]["name"].endswith(suffix))


def csi_attrs(pod, name):
    return volume(pod, name)["csi"]["volumeAttributes"]


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
                           "dns+https://shoal-scheduler-headless.shoal-system.svc.cluster.local:7601")),
        ("peers dial the scheduler's Service, not every replica behind the headless one",
         lambda d: set_arg(container(peer_pod(d), "peer"), "--scheduler",
                           "https://shoal-scheduler.shoal-system.svc.cluster.local:7600")),
        # Trust (issue 13).
        ("scheduler serves plain text (--insecure-plaintext by default)",
         lambda d: container(sched_pod(d), "scheduler")["args"].append("--insecure-plaintext")),
        ("scheduler serves plain text through the environment",
         lambda d: container(sched_pod(d), "scheduler").setdefault("env", []).append(
             {"name": "SHOAL_INSECURE_PLAINTEXT", "value": "true"})),
        ("scheduler without --tls-dir",
         lambda d: container(sched_pod(d), "scheduler")["args"].remove("--tls-dir=/etc/shoal/scheduler-tls")),
        ("--tls-dir is not where the scheduler's Secret is mounted",
         lambda d: set_arg(container(sched_pod(d), "scheduler"), "--tls-dir", "/etc/shoal/peer-tls")),
        ("peers dial the scheduler in plain text",
         lambda d: set_arg(container(peer_pod(d), "peer"), "--scheduler",
                           "dns+http://shoal-scheduler-headless.shoal-system.svc.cluster.local:7600")),
        ("shared peer certificate but no --allow-shared-identity",
         lambda d: container(sched_pod(d), "scheduler")["args"].remove("--allow-shared-identity")),
        ("scheduler certificate without the Service's names",
         lambda d: secret(d, "-scheduler-tls")["data"].update(
             {k: secret(d, "-peer-tls")["data"][k] for k in ("tls.crt", "tls.key")})),
        ("scheduler trusts another CA than the peers'",
         lambda d: secret(d, "-scheduler-tls")["data"].update({"ca.crt": base64.b64encode(other_ca()).decode()})),
        ("shared certificate named after one node",
         lambda d: secret(d, "-peer-tls")["data"].update(
             {k: secret(d, "-scheduler-tls")["data"][k] for k in ("tls.crt", "tls.key")})),
        ("no NetworkPolicy",
         lambda d: d.remove(netpol(d))),
        ("NetworkPolicy selects other pods than the scheduler's",
         lambda d: netpol(d)["spec"]["podSelector"]["matchLabels"].update({"app.kubernetes.io/component": "peer"})),
        ("gRPC open to every source",
         lambda d: grpc_rule(d).pop("from")),
        ("gRPC open to every pod of every namespace",
         lambda d: grpc_rule(d)["from"].append({"namespaceSelector": {}})),
        ("gRPC open to every address",
         lambda d: grpc_rule(d)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})),
        ("gRPC open to every pod of the namespace",
         lambda d: grpc_rule(d)["from"].append({"podSelector": {}})),
        ("the nodes cannot reach gRPC",
         lambda d: grpc_rule(d)["from"].pop(0)),
        ("a rule without ports opens gRPC too",
         lambda d: netpol(d)["spec"]["ingress"].append({"from": [{"namespaceSelector": {"matchLabels": {
             "kubernetes.io/metadata.name": "default"}}}]})),
        ("operator API open to every namespace",
         lambda d: netpol(d)["spec"]["ingress"].append({"ports": [{"port": "http", "protocol": "TCP"}],
                                                         "from": [{"namespaceSelector": {}}]})),
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


def crio_mutations():
    """Breaks of the CRI-O preset, applied to the preset-crio rendering."""
    def peer_pod(docs):
        return find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"]

    def drop_arg(c, flag):
        c["args"] = [a for a in c["args"] if not a.startswith(flag + "=")]

    def replace_arg(c, flag, value):
        c["args"] = [f"{flag}={value}" if a.startswith(flag + "=") else a for a in c["args"]]

    return [
        ("configure runs the containerd command on a CRI-O node",
         lambda d: container(peer_pod(d), "configure", init=True)["args"].__setitem__(0, "containerd")),
        ("configure writes the drop-in somewhere CRI-O does not read",
         lambda d: replace_arg(container(peer_pod(d), "configure", init=True), "--registries-conf-dir",
                               "/etc/containers/other.d")),
        ("the peer does not read registries.conf",
         lambda d: drop_arg(container(peer_pod(d), "peer"), "--containers-registries-conf")),
        ("the peer does not see /etc/containers",
         lambda d: container(peer_pod(d), "peer").update(volumeMounts=[
             m for m in container(peer_pod(d), "peer")["volumeMounts"] if m["mountPath"] != "/etc/containers"])),
    ]


def csi_mutations():
    """Breaks of per-node identity, applied to the cert-manager-csi rendering."""
    def peer_pod(docs):
        return find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"]

    def peer_attrs(docs):
        return csi_attrs(peer_pod(docs), "peer-tls")

    def sched_attrs(docs):
        return csi_attrs(sched_pod(docs), "tls")

    return [
        ("per-node certificates, but the scheduler accepts the shared one",
         lambda d: container(sched_pod(d), "scheduler")["args"].append("--allow-shared-identity")),
        ("every peer certificate has the same common name",
         lambda d: peer_attrs(d).update({"csi.cert-manager.io/common-name": "shoal-peer"})),
        ("peer certificate without the DNS name shoal-peer",
         lambda d: peer_attrs(d).update({"csi.cert-manager.io/dns-names": "${POD_NAME}"})),
        ("peer certificate not good for client use",
         lambda d: peer_attrs(d).update({"csi.cert-manager.io/key-usages": "digital signature,server auth"})),
        ("peer certificate volume writable",
         lambda d: volume(peer_pod(d), "peer-tls")["csi"].update(readOnly=False)),
        ("peer certificate mounted from a Secret again",
         lambda d: volume(peer_pod(d), "peer-tls").update(csi=None, secret={"secretName": "shoal-peer-tls"})),
        ("scheduler certificate from another issuer than the peers'",
         lambda d: sched_attrs(d).update({"csi.cert-manager.io/issuer-name": "other-ca"})),
        ("scheduler certificate without the name the peers dial",
         lambda d: sched_attrs(d).update({"csi.cert-manager.io/dns-names": "shoal-scheduler"})),
        ("scheduler certificate key unreadable for the scheduler's group",
         lambda d: sched_attrs(d).pop("csi.cert-manager.io/fs-group")),
        ("operator API open to a namespace the values do not name",
         lambda d: netpol(d)["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchExpressions"][0]
         ["values"].append("default")),
    ]


def token_review_mutations():
    """Breaks of the scheduler-issued identity, applied to the token-review rendering."""
    def peer_pod(docs):
        return find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"]

    def peer_args(docs):
        return container(peer_pod(docs), "peer")["args"]

    def replace_arg(args, flag, value):
        args[:] = [f"{flag}={value}" if a.startswith(flag + "=") else a for a in args]

    def token(docs):
        return volume(peer_pod(docs), "issuer-token")["projected"]["sources"][0]["serviceAccountToken"]

    def grant_more(docs):
        role = next(r for r in find(docs, "Role") if r["metadata"]["name"].endswith("-pods"))
        role["rules"][0]["resources"].append("secrets")

    return [
        ("a token for another audience",
         lambda d: token(d).update(audience="https://kubernetes.default.svc")),
        ("the node name from the pod's name instead of its node",
         lambda d: next(e for e in container(peer_pod(d), "peer")["env"] if e["name"] == "NODE_NAME")
         ["valueFrom"]["fieldRef"].update(fieldPath="metadata.name")),
        ("the peers' key written to disk",
         lambda d: volume(peer_pod(d), "peer-tls")["emptyDir"].pop("medium")),
        ("the issuer URL on the gRPC port",
         lambda d: replace_arg(peer_args(d), "--issuer-url",
                               "https://shoal-scheduler.shoal-system.svc.cluster.local:7600")),
        ("the issuer accepting another ServiceAccount",
         lambda d: replace_arg(container(sched_pod(d), "scheduler")["args"], "--issuer-service-account",
                               "shoal-system/default")),
        ("the issuer's CA is not the scheduler's",
         lambda d: secret(d, "-issuer-ca")["data"].update({"ca.crt": base64.b64encode(other_ca()).decode()})),
        ("the scheduler may read Secrets", grant_more),
        ("the scheduler without its token",
         lambda d: sched_pod(d).update(automountServiceAccountToken=False)),
        ("the nodes cannot reach the issuer",
         lambda d: grpc_rule(d)["ports"].pop()),
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
            print(f"  detected: {what}: {found[0].splitlines()[0]}")
    return failures
