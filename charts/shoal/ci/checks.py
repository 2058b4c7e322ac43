"""The checks scripts/check-chart runs on a rendered chart: each takes the
rendered objects and a Scenario (what the rendering must contain) and appends
the problems it finds to a list. Pure functions over the parsed YAML, except
the certificate checks (openssl) and the flag check (the binaries' --help).

Trust (issue 13): the scheduler's gRPC is mutual TLS (--tls-dir, never
--insecure-plaintext unless the scenario asks for the development switch), the
peers dial https:// names that the scheduler's certificate carries, the
scheduler's CA is the peers' CA, --allow-shared-identity goes with the shared
peer certificate and only with it, a per-node certificate comes from cert-manager's
csi-driver with the pod's name as its common name, and a NetworkPolicy lets only
the nodes reach gRPC and only the named namespaces reach the operator port.

Not here: rendering, the scenarios themselves (check_rendered.py), running the
binaries (smoke_run.py).
"""

import base64
import os
import re
import subprocess
import tempfile

# The DNS name every peer certificate carries; main() reads it from
# peer/src/tls.rs (SERVER_NAME) before any check runs.
SERVER_NAME = "shoal-peer"


# --- helpers -------------------------------------------------------------------------

def flags(args):
    """{'--flag': [values]} of `--flag=value` arguments (bare `--flag` -> [None])."""
    out = {}
    for a in args or []:
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out.setdefault(k, []).append(v if "=" in a else None)
    return out


def one(fl, name, problems, where):
    vals = fl.get(name) or []
    if len(vals) != 1:
        problems.append(f"{where}: expected exactly one {name}, found {vals}")
        return None
    return vals[0]


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def find(docs, kind, component=None, hook=None):
    out = []
    for d in docs:
        if d.get("kind") != kind:
            continue
        md = d["metadata"]
        if component and md.get("labels", {}).get("app.kubernetes.io/component") != component:
            continue
        is_hook = "helm.sh/hook" in (md.get("annotations") or {})
        if hook is not None and is_hook != hook:
            continue
        out.append(d)
    return out


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    labels = labels or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}.get(op)
        if not ok:  # None: an operator Kubernetes does not have
            return False
    return True


def container(pod, name, init=False):
    for c in pod.get("initContainers" if init else "containers") or []:
        if c["name"] == name:
            return c
    return None


def volume(pod, name):
    return next((v for v in pod.get("volumes") or [] if v["name"] == name), None)


def mount_at(c, path):
    return next((m for m in c.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == path.rstrip("/")), None)


def host_mount(pod, c, path, host_path, read_only, problems, where):
    """The container mounts host_path at path, read-only or not."""
    m = mount_at(c, path)
    if not m:
        problems.append(f"{where}: nothing mounted at {path} (wanted host path {host_path})")
        return
    v = volume(pod, m["name"])
    src = (v or {}).get("hostPath", {}).get("path")
    if src != host_path:
        problems.append(f"{where}: {path} is mounted from {src or v}, not host path {host_path}")
    if bool(m.get("readOnly")) != read_only:
        problems.append(f"{where}: {path} should be {'read-only' if read_only else 'writable'}")


# --- checks --------------------------------------------------------------------------

def check_node_setup(pod, c, sc, action, problems):
    """configure / restore: --root, --containerd-config, and the host mounts under root."""
    where = f"{action} container"
    fl = flags(c.get("args"))
    command = "containers" if sc.runtime == "crio" else "containerd"
    if c.get("args", [])[:2] != [command, action]:
        problems.append(f"{where}: args start {c.get('args', [])[:2]}, not {command} {action}")
    root = one(fl, "--root", problems, where) or "/"
    if sc.runtime == "crio":
        cfg = one(fl, "--registries-conf", problems, where)
        if cfg != sc.config:
            problems.append(f"{where}: --registries-conf={cfg}, the preset's is {sc.config}")
        drop_in = one(fl, "--registries-conf-dir", problems, where)
        if drop_in != sc.hosts[0]:
            problems.append(f"{where}: --registries-conf-dir={drop_in}, the preset's is {sc.hosts[0]}")
    else:
        cfg = one(fl, "--containerd-config", problems, where)
        if cfg != sc.config:
            problems.append(f"{where}: --containerd-config={cfg}, the preset's is {sc.config}")
        if "--hosts-dir" in fl:
            problems.append(f"{where}: --hosts-dir skips the check that containerd's config_path is set")
    host_mount(pod, c, root.rstrip("/") + os.path.dirname(sc.config), os.path.dirname(sc.config), True,
               problems, where)
    for d in sc.hosts:
        host_mount(pod, c, root.rstrip("/") + d, d, False, problems, where)
    # Writes outside the mounts must fail, not vanish into the container.
    if not (c.get("securityContext") or {}).get("readOnlyRootFilesystem"):
        problems.append(f"{where}: root file system is writable, so a config_path outside the mounts "
                        "would be written into the container and lost")
    return fl


def check_peer(docs, sc, problems):
    dss = find(docs, "DaemonSet", "peer", hook=False)
    if len(dss) != 1:
        return problems.append(f"expected one peer DaemonSet, found {len(dss)}")
    pod = dss[0]["spec"]["template"]["spec"]
    where = "peer DaemonSet"
    if pod.get("hostNetwork") is not True or pod.get("dnsPolicy") != "ClusterFirstWithHostNet":
        problems.append(f"{where}: needs hostNetwork with dnsPolicy ClusterFirstWithHostNet")
    if pod.get("priorityClassName") != "system-node-critical":
        problems.append(f"{where}: priorityClassName is {pod.get('priorityClassName')}")
    if sc.tolerate_all and {"operator": "Exists"} not in (pod.get("tolerations") or []):
        problems.append(f"{where}: does not tolerate every taint")
    peer = container(pod, "peer")
    if not peer:
        return problems.append(f"{where}: no container named peer")
    fl = flags(peer.get("args"))
    mirror = one(fl, "--mirror-listen", problems, where) or ""
    if not re.match(r"^(127\.[0-9.]+|\[::1\]):[0-9]+$", mirror):
        problems.append(f"{where}: --mirror-listen={mirror} is not on the node's loopback")
    init = container(pod, "configure", init=True)
    if sc.configure:
        if not init:
            problems.append(f"{where}: no configure init container")
        else:
            ifl = check_node_setup(pod, init, sc, "configure", problems)
            url = one(ifl, "--mirror-url", problems, "configure container")
            if url != f"http://{mirror}":
                problems.append(f"configure writes --mirror-url={url} into the node's files but the mirror "
                                f"listens on {mirror}")
    elif init:
        problems.append(f"{where}: configure runs although this preset/values turn it off")
    if sc.runtime == "crio":
        # registries.conf, its drop-ins and certs.d, read-only at their host paths.
        conf = one(fl, "--containers-registries-conf", problems, where)
        if conf != sc.config:
            problems.append(f"{where}: --containers-registries-conf={conf}, the preset's is {sc.config}")
        drop_in = one(fl, "--containers-registries-conf-dir", problems, where)
        if drop_in != sc.hosts[0]:
            problems.append(f"{where}: --containers-registries-conf-dir={drop_in}, configure writes "
                            f"{sc.hosts[0]}")
        if "--containerd-hosts-dir" in fl:
            problems.append(f"{where}: --containerd-hosts-dir on a CRI-O node")
        config_dir = os.path.dirname(sc.config)
        host_mount(pod, peer, config_dir, config_dir, True, problems, where)
    else:
        # hosts.toml and its certificates, read-only at their host paths.
        # --containerd-hosts-dir lists every hosts dir: network_checks.py.
        one(fl, "--containerd-hosts-dir", problems, where)
        for d in sc.hosts:
            host_mount(pod, peer, d, d, True, problems, where)
    data = one(fl, "--data-dir", problems, where)
    if data:
        host_mount(pod, peer, data, data, False, problems, where)
    # TLS: the Secret's three files where --peer-tls-dir looks, never the
    # development-only throw-away CA (peers started so cannot talk to each other).
    env = {e["name"]: e for e in peer.get("env") or []}
    if "--dev-ephemeral-tls" in fl or "SHOAL_DEV_EPHEMERAL_TLS" in env:
        problems.append(f"{where}: runs with --dev-ephemeral-tls (development only)")
    tls_dir = one(fl, "--peer-tls-dir", problems, where) or ""
    m = mount_at(peer, tls_dir)
    v = volume(pod, m["name"]) if m else None
    secret = (v or {}).get("secret")
    if sc.identity == "certManagerCSI":
        check_peer_csi(docs, v, m, tls_dir, problems)
    elif sc.identity == "tokenReview":
        pass  # token_review.py: the peer writes the directory itself
    elif not secret:
        problems.append(f"{where}: --peer-tls-dir={tls_dir} is not a mounted Secret (identity mode shared)")
    else:
        files = {i["path"]: i["key"] for i in secret.get("items") or []}
        for f in ("ca.crt", "tls.crt", "tls.key"):
            if secret.get("items") is not None and files.get(f) != f:
                problems.append(f"{where}: {tls_dir}/{f} is not the Secret's key {f} (items: {files})")
        check_tls_secret(docs, secret["secretName"], sc, problems)
    # Ports and probes follow the flags.
    http = port_of(one(fl, "--http-listen", problems, where) or ":0")
    quic = port_of(one(fl, "--quic-listen", problems, where) or ":0")
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in peer.get("ports") or []}
    if (quic, "UDP") not in ports or (http, "TCP") not in ports:
        problems.append(f"{where}: container ports {sorted(ports)} do not match QUIC {quic}/UDP, HTTP {http}/TCP")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        got = (peer.get(probe) or {}).get("httpGet") or {}
        if got.get("port") not in (http, "http") or got.get("path") != path:
            problems.append(f"{where}: {probe} is {got}, expected {path} on port {http}")
    if one(fl, "--advertise-addr", problems, where) != "$(NODE_IP)":
        problems.append(f"{where}: --advertise-addr is not the node IP")
    if env.get("NODE_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.hostIP":
        problems.append(f"{where}: NODE_IP does not come from status.hostIP")
    check_scheduler_url(docs, sc, fl, problems)
    if sc.cleanup:
        check_restore(docs, sc, pod, problems)
    elif find(docs, "DaemonSet", "restore"):
        problems.append("a restore hook is rendered although configure or cleanup is off")


def check_restore(docs, sc, peer_pod, problems):
    dss = find(docs, "DaemonSet", "restore", hook=True)
    jobs = find(docs, "Job", "cleanup", hook=True)
    if len(dss) != 1 or len(jobs) != 1:
        return problems.append(f"post-delete hook: {len(dss)} restore DaemonSets, {len(jobs)} Jobs (want 1 and 1)")
    ds, job = dss[0], jobs[0]
    for obj in (ds, job):
        if obj["metadata"]["annotations"].get("helm.sh/hook") != "post-delete":
            problems.append(f"{obj['kind']} {obj['metadata']['name']} is not a post-delete hook")
    weight = lambda o: int(o["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    if not weight(ds) < weight(job):
        problems.append("post-delete hook: the waiting Job must come after the restore DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    restore = container(pod, "restore", init=True)
    if not restore:
        return problems.append("restore DaemonSet: no restore init container")
    check_node_setup(pod, restore, sc, "restore", problems)
    if pod.get("tolerations") != peer_pod.get("tolerations") or pod.get("nodeSelector") != peer_pod.get("nodeSelector"):
        problems.append("restore DaemonSet does not run on the same nodes as the peers")
    if f"daemonset/{ds['metadata']['name']}" not in job["spec"]["template"]["spec"]["containers"][0].get("args", []):
        problems.append("the cleanup Job does not wait for the restore DaemonSet")


def check_tls_secret(docs, name, sc, problems):
    rendered = [d for d in find(docs, "Secret") if d["metadata"]["name"] == name]
    if sc.tls_secret:
        if name != sc.tls_secret or rendered:
            problems.append(f"peer TLS: expected the existing Secret {sc.tls_secret} only, got {name}")
        return
    if len(rendered) != 1:
        return problems.append(f"peer TLS: Secret {name} is not rendered")
    data = rendered[0].get("data") or {}
    missing = [k for k in ("ca.crt", "tls.crt", "tls.key") if k not in data]
    if missing:
        return problems.append(f"peer TLS: Secret {name} lacks {missing}")
    problems.extend(check_certificate({k: base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")}))


def secret_files(docs, name):
    """The decoded files of a rendered Secret, or None."""
    rendered = [d for d in find(docs, "Secret") if d["metadata"]["name"] == name]
    if not rendered:
        return None
    return {k: base64.b64decode(v) for k, v in (rendered[0].get("data") or {}).items()}


def openssl(*args, stdin=None):
    r = subprocess.run(["openssl", *args], input=stdin, capture_output=True)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def check_certificate(files):
    """The peer certificate works for peer/src/tls.rs: SAN, chain, key usage, key pair."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in files.items():
            with open(os.path.join(tmp, k), "wb") as f:
                f.write(v)
        crt, ca, key = (os.path.join(tmp, k) for k in ("tls.crt", "ca.crt", "tls.key"))
        rc, text = openssl("x509", "-in", crt, "-noout", "-ext", "subjectAltName")
        if rc != 0 or not re.search(rf"DNS:{re.escape(SERVER_NAME)}(,|\s|$)", text):
            out.append(f"peer TLS: tls.crt lacks the DNS name {SERVER_NAME} ({text.strip()})")
        # The shared certificate names no node: the scheduler recognises it by
        # this common name (and then needs --allow-shared-identity).
        cn = common_name(crt)
        if cn != SERVER_NAME:
            out.append(f"peer TLS: the shared certificate's common name is {cn!r}, not {SERVER_NAME!r}: the "
                       "scheduler would take it for one node's certificate, and every peer would be that node")
        for purpose in ("sslserver", "sslclient"):
            rc, text = openssl("verify", "-purpose", purpose, "-CAfile", ca, crt)
            if rc != 0:
                out.append(f"peer TLS: tls.crt does not verify against ca.crt for {purpose}: {text.strip()}")
        rc1, cert_pub = openssl("x509", "-in", crt, "-noout", "-pubkey")
        rc2, key_pub = openssl("pkey", "-in", key, "-pubout")
        if rc1 or rc2 or cert_pub != key_pub:
            out.append("peer TLS: tls.key is not the key of tls.crt")
    return out


def common_name(crt_path):
    rc, text = openssl("x509", "-in", crt_path, "-noout", "-subject", "-nameopt", "RFC2253")
    m = re.search(r"CN=([^,\n]*)", text)
    return m.group(1).strip() if rc == 0 and m else None


def check_scheduler_url(docs, sc, peer_flags, problems):
    svc = find(docs, "Service", "scheduler")
    deps = find(docs, "Deployment", "scheduler")
    scheme = "http" if sc.plaintext else "https"
    for u in peer_flags.get("--scheduler") or []:
        if not re.match(rf"^(dns\+)?{scheme}://", u):
            problems.append(f"peer --scheduler={u}: the scheduler's gRPC is "
                            f"{'plain text' if sc.plaintext else 'mutual TLS'}, the URL must be {scheme}://")
    url = (peer_flags.get("--scheduler") or [""])[0]
    # The peers find every replica through the headless Service (issue 16).
    m = re.match(r"^dns\+https?://([^.]+)\.([^.]+)\.svc\.[a-z.]+:(\d+)$", url)
    headless = [s for s in svc if s["spec"].get("clusterIP") == "None"]
    if not m or not headless or not deps:
        return problems.append(f"peer --scheduler={url}: not dns+{scheme}:// naming the scheduler's "
                               "headless Service (the peers must find every replica)")
    name, ns, port = m.group(1), m.group(2), int(m.group(3))
    s = headless[0]
    if (name, ns) != (s["metadata"]["name"], s["metadata"]["namespace"]):
        problems.append(f"peer --scheduler={url} names {name}.{ns}, the headless Service is "
                        f"{s['metadata']['name']}.{s['metadata']['namespace']}")
    sp = next((p for p in s["spec"]["ports"] if p["port"] == port), None)
    sched = container(deps[0]["spec"]["template"]["spec"], "scheduler")
    grpc = port_of(one(flags(sched.get("args")), "--grpc-listen", problems, "scheduler") or ":0")
    cports = {p["name"]: p["containerPort"] for p in sched.get("ports") or []}
    target = sp and (cports.get(sp["targetPort"]) if isinstance(sp["targetPort"], str) else sp["targetPort"])
    if target != grpc:
        problems.append(f"peer --scheduler port {port} reaches container port {target}, the scheduler "
                        f"listens for gRPC on {grpc}")


def check_scheduler(docs, sc, problems):
    deps = find(docs, "Deployment", "scheduler")
    if len(deps) != 1:
        return problems.append(f"expected one scheduler Deployment, found {len(deps)}")
    pod = deps[0]["spec"]["template"]["spec"]
    c = container(pod, "scheduler")
    fl = flags(c.get("args"))
    where = "scheduler"
    http = port_of(one(fl, "--http-listen", problems, where) or ":0")
    cports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
    if cports.get("http") != http or cports.get("grpc") != port_of((fl.get("--grpc-listen") or [":0"])[0]):
        problems.append(f"{where}: container ports {cports} do not match the listen flags")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = (c.get(probe) or {}).get("httpGet") or {}
        if cports.get(got.get("port"), got.get("port")) != http or got.get("path") != path:
            problems.append(f"{where}: {probe} is {got}, expected {path} on {http}")
    token = one(fl, "--operator-token-file", problems, where) or "/"
    m = mount_at(c, os.path.dirname(token))
    secret = (volume(pod, m["name"]) or {}).get("secret") if m else None
    if not secret:
        return problems.append(f"{where}: --operator-token-file={token} is not in a mounted Secret")
    items = {i["path"]: i["key"] for i in secret.get("items") or []}
    key = items.get(os.path.basename(token), os.path.basename(token))
    if sc.token_secret:
        if secret["secretName"] != sc.token_secret:
            problems.append(f"{where}: token Secret {secret['secretName']}, expected {sc.token_secret}")
    else:
        s = [d for d in find(docs, "Secret") if d["metadata"]["name"] == secret["secretName"]]
        if not s or key not in (s[0].get("data") or {}) or not base64.b64decode(s[0]["data"][key]):
            problems.append(f"{where}: the token Secret {secret['secretName']} has no non-empty key {key}")
    heads = [s for s in find(docs, "Service", "scheduler") if s["spec"].get("clusterIP") == "None"]
    if len(heads) != 1:
        problems.append(f"{where}: expected one headless Service for replica discovery, found {len(heads)}")


# --- TLS, identity ---------------------------------------------------------------------

CSI_DRIVER = "csi.cert-manager.io"
CSI = CSI_DRIVER + "/"
# What each certificate must be good for (csi.cert-manager.io/key-usages).
PEER_USAGES = {"server auth", "client auth"}    # QUIC both ways, client towards the scheduler
SCHEDULER_USAGES = {"server auth"}


def csi_list(attrs, key):
    return [x.strip() for x in (attrs.get(CSI + key) or "").split(",") if x.strip()]


def check_csi_volume(v, m, where, problems):
    """A read-only cert-manager csi-driver volume writing ca.crt, tls.crt, tls.key;
    returns its attributes."""
    csi = (v or {}).get("csi")
    if not csi or csi.get("driver") != CSI_DRIVER:
        problems.append(f"{where}: not a {CSI_DRIVER} volume ({v})")
        return None
    attrs = csi.get("volumeAttributes") or {}
    if csi.get("readOnly") is not True or not (m or {}).get("readOnly"):
        problems.append(f"{where}: the {CSI_DRIVER} volume must be mounted read-only (the driver refuses "
                        "writable mounts, and nothing in the pod may replace its certificate)")
    if not attrs.get(CSI + "issuer-name"):
        problems.append(f"{where}: no {CSI}issuer-name")
    for key, want in (("ca-file", "ca.crt"), ("certificate-file", "tls.crt"), ("privatekey-file", "tls.key")):
        if attrs.get(CSI + key, want) != want:
            problems.append(f"{where}: {CSI}{key} is {attrs[CSI + key]}, the binaries read {want}")
    if (attrs.get(CSI + "is-ca") or "").lower() == "true":
        problems.append(f"{where}: asks for a CA certificate")
    return attrs


def check_peer_csi(docs, v, m, tls_dir, problems):
    """Per-node identity: a certificate per peer pod, naming it, from the csi-driver."""
    where = f"peer DaemonSet: --peer-tls-dir={tls_dir}"
    attrs = check_csi_volume(v, m, where, problems)
    if attrs is None:
        return
    cn = attrs.get(CSI + "common-name")
    if cn != "${POD_NAME}":
        problems.append(f"{where}: common name {cn!r}, expected ${{POD_NAME}}: the common name is the peer's id, "
                        "one per pod (the scheduler binds every message to it)")
    if SERVER_NAME not in csi_list(attrs, "dns-names"):
        problems.append(f"{where}: dns-names {csi_list(attrs, 'dns-names')} lack {SERVER_NAME}, the name peers "
                        "verify each other's QUIC certificate with")
    missing = PEER_USAGES - set(csi_list(attrs, "key-usages"))
    if missing:
        problems.append(f"{where}: key-usages lack {sorted(missing)}")
    tls = [d["metadata"]["name"] for d in find(docs, "Secret") if d.get("type") == "kubernetes.io/tls"]
    if tls:
        problems.append(f"per-node identity, but TLS Secrets {tls} are rendered (a shared key nobody needs)")


def check_operator_tls(docs, c, fl, tls_dir, wanted, problems):
    """scheduler.operatorTLS: --http-tls-dir is the serving certificate's directory,
    the probes use HTTPS and a ServiceMonitor scrapes with https; without it, none."""
    where = "scheduler"
    http_tls = (fl.get("--http-tls-dir") or [None])[0]
    if wanted and http_tls != tls_dir:
        problems.append(f"{where}: scheduler.operatorTLS but --http-tls-dir is {http_tls!r}, not {tls_dir!r}")
    if not wanted and http_tls:
        problems.append(f"{where}: --http-tls-dir without scheduler.operatorTLS")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        scheme = ((c.get(probe) or {}).get("httpGet") or {}).get("scheme", "HTTP")
        if scheme != ("HTTPS" if http_tls else "HTTP"):
            problems.append(f"{where}: {probe} uses {scheme} but the operator API is "
                            f"{'TLS' if http_tls else 'plain HTTP'}")
    for sm in find(docs, "ServiceMonitor", "scheduler"):
        for ep in sm["spec"]["endpoints"]:
            scheme = ep.get("scheme", "http")
            if scheme != ("https" if http_tls else "http"):
                problems.append(f"ServiceMonitor {sm['metadata']['name']}: scrapes with {scheme} but the "
                                f"operator API is {'TLS' if http_tls else 'plain HTTP'}")
            if http_tls and not ((ep.get("tlsConfig") or {}).get("ca") or {}).get("secret"):
                problems.append(f"ServiceMonitor {sm['metadata']['name']}: https without the scheduler's CA")


def check_scheduler_tls(docs, sc, problems):
    """Mutual TLS on gRPC unless the scenario is the development switch; the
    shared-identity switch exactly with the shared peer certificate; a serving
    certificate the peers accept for the name they dial, from their CA."""
    deps = find(docs, "Deployment", "scheduler")
    peers = find(docs, "DaemonSet", "peer", hook=False)
    if len(deps) != 1 or len(peers) != 1:
        return
    pod = deps[0]["spec"]["template"]["spec"]
    c = container(pod, "scheduler")
    fl = flags(c.get("args"))
    env = {e["name"]: e for e in c.get("env") or []}
    where = "scheduler"
    plaintext = "--insecure-plaintext" in fl or "SHOAL_INSECURE_PLAINTEXT" in env
    if sc.plaintext:
        if "--insecure-plaintext" not in fl:
            problems.append(f"{where}: scheduler.insecurePlaintext is set but the scheduler has no --insecure-plaintext")
        if "--tls-dir" in fl:
            problems.append(f"{where}: both --tls-dir and --insecure-plaintext")
        return
    if plaintext:
        problems.append(f"{where}: runs with --insecure-plaintext (development only: anyone who reaches the "
                        "gRPC port speaks for any node) although scheduler.insecurePlaintext is not set")
    shared = "--allow-shared-identity" in fl or "SHOAL_ALLOW_SHARED_IDENTITY" in env
    if sc.identity == "shared" and not shared:
        problems.append(f"{where}: the peers share one certificate (identity shared) but the scheduler lacks "
                        "--allow-shared-identity, so it refuses every peer")
    if sc.identity != "shared" and shared:
        problems.append(f"{where}: --allow-shared-identity with per-node identity ({sc.identity}): the "
                        "shared certificate would speak for any node")
    tls_dir = one(fl, "--tls-dir", problems, where)
    if not tls_dir:
        return
    check_operator_tls(docs, c, fl, tls_dir, getattr(sc, "operator_tls", False), problems)
    m = mount_at(c, tls_dir)
    v = volume(pod, m["name"]) if m else None
    peer_pod = peers[0]["spec"]["template"]["spec"]
    peer_c = container(peer_pod, "peer")
    url = (flags(peer_c.get("args")).get("--scheduler") or [""])[0]
    host = re.sub(r"^(?:dns\+)?https?://([^:/]+).*$", r"\1", url)
    names = service_names(host)
    if (v or {}).get("secret"):
        secret = v["secret"]
        files = {i["path"]: i["key"] for i in secret.get("items") or []}
        for f in ("ca.crt", "tls.crt", "tls.key"):
            if secret.get("items") is not None and files.get(f) != f:
                problems.append(f"{where}: {tls_dir}/{f} is not the Secret's key {f} (items: {files})")
        name = secret["secretName"]
        if sc.sched_tls_secret:
            if name != sc.sched_tls_secret or secret_files(docs, name) is not None:
                problems.append(f"{where}: expected the existing Secret {sc.sched_tls_secret} only, got {name}")
            return
        sched = secret_files(docs, name)
        if sc.identity == "tokenReview" and sched is not None:
            # No peer certificate is rendered: the issuer signs them, with the CA
            # token_review.py checks against this ca.crt.
            return problems.extend(check_scheduler_certificate(sched, None, names, peer_required=False))
        if sc.identity != "shared" or sched is None:
            return problems.append(f"{where}: --tls-dir={tls_dir} is the Secret {name}, which is not rendered")
        peer_secret = (volume(peer_pod, "peer-tls") or {}).get("secret") or {}
        problems.extend(check_scheduler_certificate(sched, secret_files(docs, peer_secret.get("secretName")),
                                                    names))
    elif (v or {}).get("csi"):
        attrs = check_csi_volume(v, m, f"{where}: --tls-dir={tls_dir}", problems)
        if attrs is None:
            return
        peer_v = volume(peer_pod, "peer-tls") or {}
        peer_attrs = (peer_v.get("csi") or {}).get("volumeAttributes") or {}
        issuer = [CSI + k for k in ("issuer-name", "issuer-kind", "issuer-group")]
        if sc.identity != "certManagerCSI" or [attrs.get(k) for k in issuer] != [peer_attrs.get(k) for k in issuer]:
            problems.append(f"{where}: its certificate comes from issuer {[attrs.get(k) for k in issuer]}, the "
                            f"peers' from {[peer_attrs.get(k) for k in issuer]}: they would not trust each other")
        dns = csi_list(attrs, "dns-names")
        if [n for n in names if n not in dns]:
            problems.append(f"{where}: dns-names {dns} lack {[n for n in names if n not in dns]} (peers dial {url})")
        missing = SCHEDULER_USAGES - set(csi_list(attrs, "key-usages"))
        if missing:
            problems.append(f"{where}: key-usages lack {sorted(missing)}")
        # The driver writes the key for root only, unless fs-group names the
        # group the non-root scheduler runs with.
        psc = pod.get("securityContext") or {}
        if psc.get("runAsUser", 0) != 0:
            gid = psc.get("fsGroup", psc.get("runAsGroup"))
            if attrs.get(CSI + "fs-group") != str(gid):
                problems.append(f"{where}: {CSI}fs-group is {attrs.get(CSI + 'fs-group')}, the scheduler runs as "
                                f"group {gid} and could not read its key")
    else:
        problems.append(f"{where}: --tls-dir={tls_dir} is neither a mounted Secret nor a {CSI_DRIVER} volume")


def service_names(host):
    """The names a Service's certificate needs: a.b.svc.<domain> -> a, a.b, a.b.svc, host."""
    parts = host.split(".")
    if len(parts) < 4 or parts[2] != "svc":
        return [host]
    return [parts[0], ".".join(parts[:2]), ".".join(parts[:3]), host]


def check_scheduler_certificate(sched, peer, names, peer_required=True):
    """The scheduler's serving certificate: the Service's names, server use, its
    key, and a CA shared with the peers (each side verifies the other with it)."""
    out = []
    if not sched or any(k not in sched for k in ("ca.crt", "tls.crt", "tls.key")):
        return [f"scheduler TLS: the Secret lacks ca.crt, tls.crt or tls.key ({sorted(sched or {})})"]
    with tempfile.TemporaryDirectory() as tmp:
        def put(name, data):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            return path
        crt, ca, key = put("s.crt", sched["tls.crt"]), put("s-ca.crt", sched["ca.crt"]), put("s.key", sched["tls.key"])
        rc, text = openssl("x509", "-in", crt, "-noout", "-ext", "subjectAltName")
        got = set(re.findall(r"DNS:([^,\s]+)", text)) if rc == 0 else set()
        lacking = [n for n in names if n not in got]
        if lacking:
            out.append(f"scheduler TLS: tls.crt lacks the DNS names {lacking} (has {sorted(got)}); peers dial "
                       f"{names[-1]} and verify that name")
        rc, text = openssl("verify", "-purpose", "sslserver", "-CAfile", ca, crt)
        if rc != 0:
            out.append(f"scheduler TLS: tls.crt does not verify against its ca.crt for server use: {text.strip()}")
        rc1, cert_pub = openssl("x509", "-in", crt, "-noout", "-pubkey")
        rc2, key_pub = openssl("pkey", "-in", key, "-pubout")
        if rc1 or rc2 or cert_pub != key_pub:
            out.append("scheduler TLS: tls.key is not the key of tls.crt")
        if peer and "ca.crt" in peer and "tls.crt" in peer:
            p_crt, p_ca = put("p.crt", peer["tls.crt"]), put("p-ca.crt", peer["ca.crt"])
            rc, text = openssl("verify", "-purpose", "sslclient", "-CAfile", ca, p_crt)
            if rc != 0:
                out.append(f"scheduler TLS: the peers' certificate does not verify against the scheduler's "
                           f"ca.crt (the scheduler would refuse every peer): {text.strip()}")
            rc, text = openssl("verify", "-purpose", "sslserver", "-CAfile", p_ca, crt)
            if rc != 0:
                out.append(f"scheduler TLS: the scheduler's certificate does not verify against the peers' "
                           f"ca.crt (every peer would refuse the scheduler): {text.strip()}")
        elif peer_required:
            out.append("scheduler TLS: no rendered peer certificate to check the shared CA against")
    return out


# --- NetworkPolicy -------------------------------------------------------------------

def pod_labels(docs, kind, component):
    objs = find(docs, kind, component, hook=False)
    return objs[0]["spec"]["template"]["metadata"].get("labels") or {} if objs else None


def check_network_policy(docs, sc, problems):
    """With the policy on (sc.netpol): the scheduler pods are isolated for ingress;
    whatever reaches the gRPC port is a node CIDR or the peer pods, whatever
    reaches the operator port is a named namespace; and those do get in."""
    nps = find(docs, "NetworkPolicy")
    if sc.netpol is None:
        if nps:
            problems.append(f"NetworkPolicies {[n['metadata']['name'] for n in nps]} rendered although "
                            "networkPolicy.enabled=false")
        return
    deps = find(docs, "Deployment", "scheduler")
    if not deps:
        return
    sched_labels = pod_labels(docs, "Deployment", "scheduler")
    peer_labels = pod_labels(docs, "DaemonSet", "peer") or {}
    c = container(deps[0]["spec"]["template"]["spec"], "scheduler")
    fl = flags(c.get("args"))
    grpc = port_of((fl.get("--grpc-listen") or [":0"])[0])
    http = port_of((fl.get("--http-listen") or [":0"])[0])
    names = {p["containerPort"]: p.get("name") for p in c.get("ports") or []}
    covering = [n for n in nps if selects(n["spec"].get("podSelector") or {}, sched_labels)
                and "Ingress" in (n["spec"].get("policyTypes") or ["Ingress"])]
    if not covering:
        return problems.append(f"no NetworkPolicy selects the scheduler pods ({sched_labels}): any pod reaches "
                               f"gRPC {grpc} and the operator API {http}")
    node_cidrs = set(sc.netpol.get("node_cidrs") or [])
    namespaces = set(sc.netpol.get("namespaces") or [])

    def from_nodes(peer):
        ip = peer.get("ipBlock")
        if ip is not None:
            return set(peer) == {"ipBlock"} and ip.get("cidr") in node_cidrs
        sel = peer.get("podSelector")
        # The peer pods of this namespace, and nothing else.
        return (set(peer) == {"podSelector"} and sel is not None and selects(sel, peer_labels)
                and (sel.get("matchLabels") or {}).get("app.kubernetes.io/component") == "peer")

    def ns_names(peer):
        if set(peer) != {"namespaceSelector"}:
            return None
        sel = peer["namespaceSelector"] or {}
        got = set()
        for k, v in (sel.get("matchLabels") or {}).items():
            if k != "kubernetes.io/metadata.name":
                return None
            got.add(v)
        for e in sel.get("matchExpressions") or []:
            if e.get("key") != "kubernetes.io/metadata.name" or e.get("operator") != "In":
                return None
            got |= set(e.get("values") or [])
        return got or None  # an empty selector: every namespace

    def from_operators(peer):
        got = ns_names(peer)
        return got is not None and got <= namespaces

    reach_grpc, reach_http = set(), set()
    for n in covering:
        name = n["metadata"]["name"]
        for rule in n["spec"].get("ingress") or []:
            ports = rule.get("ports")
            srcs = rule.get("from")
            for port, ok, what in ((grpc, from_nodes, "the peers' node CIDRs and pods"),
                                   (http, from_operators, f"namespaces {sorted(namespaces)}")):
                if ports and not any(p.get("port") in (port, names.get(port)) or p.get("port") is None
                                     for p in ports):
                    continue
                if not srcs:
                    problems.append(f"NetworkPolicy {name}: port {port} is open to every source, not only {what}")
                    continue
                for peer in srcs:
                    if not ok(peer):
                        problems.append(f"NetworkPolicy {name}: port {port} admits {peer}, not only {what}")
                    elif port == grpc and "ipBlock" in peer:
                        reach_grpc.add(peer["ipBlock"]["cidr"])
                    elif port == http:
                        reach_http |= ns_names(peer)
    if node_cidrs - reach_grpc:
        problems.append(f"NetworkPolicy: the nodes in {sorted(node_cidrs - reach_grpc)} cannot reach gRPC {grpc}, "
                        "so their peers cannot join")
    if namespaces - reach_http:
        problems.append(f"NetworkPolicy: namespaces {sorted(namespaces - reach_http)} cannot reach the operator "
                        f"port {http}")


def check_selectors_and_labels(docs, sc, problems):
    pods = [(d["kind"], d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"])
            for d in docs if d.get("kind") in ("Deployment", "DaemonSet", "Job")]
    for d in docs:
        sel = None
        if d["kind"] == "Service":
            sel = d["spec"].get("selector")
        elif d["kind"] in ("PodDisruptionBudget", "Deployment", "DaemonSet"):
            sel = d["spec"]["selector"]["matchLabels"]
        if sel is not None:
            hits = [n for k, n, labels in pods if all(labels.get(a) == b for a, b in sel.items())]
            if len(hits) != 1:
                problems.append(f"{d['kind']} {d['metadata']['name']}: selector {sel} matches {hits}")
        if d["kind"] == "ServiceMonitor":
            # Exactly one Service: two selecting the same pods (the scheduler's
            # headless one) would scrape every pod twice.
            svcs = [s for s in find(docs, "Service") if selects(d["spec"]["selector"], s["metadata"].get("labels"))]
            names = {p.get("name") for s in svcs for p in s["spec"]["ports"]}
            if len(svcs) != 1 or any(e["port"] not in names for e in d["spec"]["endpoints"]):
                want = sorted({e["port"] for e in d["spec"]["endpoints"]})
                problems.append(f"ServiceMonitor {d['metadata']['name']}: selects {len(svcs)} Services "
                                f"({', '.join(s['metadata']['name'] for s in svcs)}) with ports {sorted(names)}, "
                                f"wanted exactly one Service with ports {want}")
        for k, v in sc.labels.items():
            if d["metadata"].get("labels", {}).get(k) != v:
                problems.append(f"{d['kind']} {d['metadata']['name']}: lacks commonLabel {k}={v}")


def check_flags_exist(docs, bin_dir, problems, cache={}):
    """Every --flag passed to a Shoal binary appears in that binary's --help."""
    for d in docs:
        spec = (d.get("spec") or {}).get("template", {}).get("spec") or {}
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            cmd = (c.get("command") or [""])[0]
            if cmd not in ("shoal-peer", "shoal-scheduler"):
                continue
            args = c.get("args") or []
            sub = [a for a in args if not a.startswith("-")][: {"shoal-peer": 2, "shoal-scheduler": 0}[cmd]]
            if cmd == "shoal-peer" and sub[:1] == ["run"]:
                sub = ["run"]
            key = (cmd, *sub)
            if key not in cache:
                r = subprocess.run([os.path.join(bin_dir, cmd), *sub, "--help"], capture_output=True, text=True)
                cache[key] = set(re.findall(r"--[a-z0-9][a-z0-9-]*", r.stdout)) if r.returncode == 0 else None
            known = cache[key]
            if known is None:
                problems.append(f"`{cmd} {' '.join(sub)} --help` failed")
                continue
            for f in flags(args):
                if f not in known:
                    problems.append(f"{d['kind']} {d['metadata']['name']}/{c['name']}: `{' '.join(key)}` "
                                    f"has no flag {f}")


def check_all(docs, sc, bin_dir=None):
    from token_review import check_token_review  # it imports this module's helpers
    from network_checks import check_ip_families
    problems = []
    for fn in (check_peer, check_scheduler, check_scheduler_tls, check_network_policy, check_selectors_and_labels,
               check_token_review, check_ip_families):
        try:
            fn(docs, sc, problems)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
            problems.append(f"{fn.__name__}: unexpected shape ({type(e).__name__}: {e})")
    if bin_dir:
        check_flags_exist(docs, bin_dir, problems)
    return problems


def check_metric_names(repo, chart):
    """Every shoal_* metric the dashboard, NOTES.txt and docs/install.md name is one
    the code exports (scheduler: registry prefix shoal_scheduler_ + name, counters
    get _total; peer: registry prefixes shoal_peer_ and shoal_mirror_ + name, the same)."""
    sched = open(os.path.join(repo, "scheduler/src/metrics.rs")).read()
    peer = ""
    for d, _, files in os.walk(os.path.join(repo, "peer/src")):
        peer += "".join(open(os.path.join(d, f)).read() for f in files if f.endswith(".rs"))
    problems = []
    for path in (os.path.join(chart, "files/dashboard.json"), os.path.join(chart, "templates/NOTES.txt"),
                 os.path.join(repo, "docs/install.md")):
        text = open(path).read()
        for name in sorted(set(re.findall(r"\bshoal_[a-z_]+[a-z]", text))):
            prefix = next((p for p in ("shoal_scheduler_", "shoal_peer_", "shoal_mirror_") if name.startswith(p)), None)
            if prefix is None:
                ok = False
            else:
                base = re.sub(r"_total$", "", name[len(prefix):])
                ok = f'"{base}"' in (sched if prefix == "shoal_scheduler_" else peer)
            if not ok:
                problems.append(f"{os.path.relpath(path, repo)} names metric {name}, which the code does not export")
    print("check-chart: metric names in the dashboard, NOTES.txt and docs/install.md checked against the code")
    return problems
