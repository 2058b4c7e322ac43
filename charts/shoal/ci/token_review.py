"""check-chart's checks of peer.identity.mode=tokenReview (the scheduler issues each
node's certificate for a CSR sent with the pod's projected ServiceAccount token),
and of its absence in the other modes. Pure functions over the rendered objects
(plus openssl for the CA's key), like checks.py.

What must hold for a peer to get a certificate and for nothing else to get one:
- peer: --identity=token-review, --node-name from spec.nodeName (the downward
  API), --peer-tls-dir a writable emptyDir in memory (the key is made there and
  never written to disk), --sa-token-file a projected ServiceAccount token for
  the audience the scheduler's --issuer-audience names, --issuer-ca-file the
  ca.crt of the scheduler's serving certificate, --issuer-url the scheduler's
  Service name (as --scheduler) on the issuer port; no peer TLS Secret;
- scheduler: --issuer-ca-dir a Secret with ca.crt and ca.key, the key being
  that CA's and the CA the serving certificate's; --issuer-service-account and
  --issuer-daemonset the peers' own; its token mounted; RBAC to create
  tokenreviews and get pods in its namespace, bound to its ServiceAccount and
  nothing more; the issuer port on the container, the Service and, with the
  NetworkPolicy on, open to the node CIDRs;
- other modes: none of that (no issuer flags, no RBAC, no token).
"""

import base64
import os
import re
import tempfile

from checks import container, find, flags, mount_at, one, openssl, port_of, secret_files, volume


def check_token_review(docs, sc, problems):
    deps = find(docs, "Deployment", "scheduler")
    peers = find(docs, "DaemonSet", "peer", hook=False)
    if len(deps) != 1 or len(peers) != 1:
        return
    spod = deps[0]["spec"]["template"]["spec"]
    ppod = peers[0]["spec"]["template"]["spec"]
    s, p = container(spod, "scheduler"), container(ppod, "peer")
    sfl, pfl = flags(s.get("args")), flags(p.get("args"))
    ns = deps[0]["metadata"]["namespace"]
    sched_sa = spod.get("serviceAccountName")
    if sc.identity != "tokenReview":
        if any(k.startswith("--issuer") for k in sfl) or "--identity" in pfl:
            problems.append(f"issuer flags without peer.identity.mode=tokenReview: {sorted(sfl)} {sorted(pfl)}")
        if spod.get("automountServiceAccountToken") is not False:
            problems.append("scheduler: its ServiceAccount token is mounted, but only the issuer needs it")
        cluster, local = scheduler_grants(docs, sched_sa, ns)
        if cluster or local:
            problems.append(f"scheduler RBAC without the issuer: {sorted(cluster | local)}")
        return

    # --- peer ---
    where = "peer DaemonSet (tokenReview)"
    if pfl.get("--identity") != ["token-review"]:
        problems.append(f"{where}: --identity={pfl.get('--identity')}, expected token-review")
    env = {e["name"]: e for e in p.get("env") or []}
    node = one(pfl, "--node-name", problems, where) or ""
    var = re.fullmatch(r"\$\((\w+)\)", node)
    field = (((env.get(var.group(1)) if var else None) or {}).get("valueFrom") or {}).get("fieldRef", {})
    if field.get("fieldPath") != "spec.nodeName":
        problems.append(f"{where}: --node-name={node} is not the downward API's spec.nodeName; the token names "
                        "the pod's node, and the issuer refuses any other")
    tls_dir = one(pfl, "--peer-tls-dir", problems, where) or ""
    m = mount_at(p, tls_dir)
    v = volume(ppod, m["name"]) if m else None
    if not (v or {}).get("emptyDir") or m.get("readOnly"):
        problems.append(f"{where}: --peer-tls-dir={tls_dir} must be a writable emptyDir (the peer writes its key "
                        f"and certificate there), not {v}")
    elif (v["emptyDir"] or {}).get("medium") != "Memory":
        problems.append(f"{where}: --peer-tls-dir={tls_dir} is on disk; the key belongs in memory")
    peer_tls = [d["metadata"]["name"] for d in find(docs, "Secret") if d["metadata"]["name"].endswith("-peer-tls")]
    if peer_tls:
        problems.append(f"{where}: peer TLS Secrets {peer_tls} are rendered (a shared key nobody needs)")
    token = one(pfl, "--sa-token-file", problems, where) or ""
    tm = mount_at(p, os.path.dirname(token))
    tv = (volume(ppod, tm["name"]) if tm else None) or {}
    sources = (tv.get("projected") or {}).get("sources") or []
    sat = next((x["serviceAccountToken"] for x in sources if "serviceAccountToken" in x), None)
    audience = (sfl.get("--issuer-audience") or [None])[0]
    if not sat or sat.get("path") != os.path.basename(token):
        problems.append(f"{where}: --sa-token-file={token} is not a projected ServiceAccount token")
    elif sat.get("audience") != audience:
        problems.append(f"{where}: the projected token's audience {sat.get('audience')!r} is not the scheduler's "
                        f"--issuer-audience {audience!r}: every review would fail")
    ca_file = one(pfl, "--issuer-ca-file", problems, where) or ""
    cm = mount_at(p, os.path.dirname(ca_file))
    cv = ((volume(ppod, cm["name"]) if cm else None) or {}).get("secret") or {}
    sched_tls = (volume(spod, (mount_at(s, (sfl.get("--tls-dir") or [""])[0]) or {}).get("name", "")) or {})
    sched_secret = (sched_tls.get("secret") or {}).get("secretName")
    items = {i["path"]: i["key"] for i in cv.get("items") or []}
    if cv.get("secretName") != sched_secret or items.get(os.path.basename(ca_file)) != "ca.crt":
        problems.append(f"{where}: --issuer-ca-file={ca_file} is not ca.crt of the scheduler's TLS Secret "
                        f"{sched_secret} ({cv})")
    url = one(pfl, "--issuer-url", problems, where) or ""
    sched_url = (pfl.get("--scheduler") or [""])[0]
    def host(u):
        """A URL's host; the headless Service's name as its Service's (the issuer is
        reached through the Service, gRPC through the headless one)."""
        h = re.sub(r"^(?:dns\+)?https://([^:/]+).*$", r"\1", u)
        return re.sub(r"^([^.]+)-headless\.", r"\1.", h)

    issuer_port = port_of((sfl.get("--issuer-listen") or [":0"])[0])
    if not url.startswith("https://") or host(url) != host(sched_url) or not url.endswith(f":{issuer_port}"):
        problems.append(f"{where}: --issuer-url={url}, expected https://{host(sched_url)}:{issuer_port} (the name "
                        "the scheduler's certificate carries, the issuer's port)")

    # --- scheduler ---
    where = "scheduler (tokenReview)"
    if spod.get("automountServiceAccountToken") is not True:
        problems.append(f"{where}: its ServiceAccount token is not mounted; TokenReview needs it")
    sa = ppod.get("serviceAccountName")
    if sfl.get("--issuer-service-account") != [f"{ns}/{sa}"]:
        problems.append(f"{where}: --issuer-service-account={sfl.get('--issuer-service-account')}, the peers run "
                        f"as {ns}/{sa}")
    if sfl.get("--issuer-daemonset") != [peers[0]["metadata"]["name"]]:
        problems.append(f"{where}: --issuer-daemonset={sfl.get('--issuer-daemonset')}, the peer DaemonSet is "
                        f"{peers[0]['metadata']['name']}")
    ca_dir = one(sfl, "--issuer-ca-dir", problems, where) or ""
    am = mount_at(s, ca_dir)
    av = ((volume(spod, am["name"]) if am else None) or {}).get("secret") or {}
    if {i["path"]: i["key"] for i in av.get("items") or []} != {"ca.crt": "ca.crt", "ca.key": "ca.key"}:
        problems.append(f"{where}: --issuer-ca-dir={ca_dir} is not a Secret's ca.crt and ca.key ({av})")
    ca = secret_files(docs, av.get("secretName"))
    sched = secret_files(docs, sched_secret)
    if ca is not None and sched is not None:
        problems.extend(check_ca_pair(ca, sched))
    elif sc.sched_tls_secret is None:
        problems.append(f"{where}: the CA Secret {av.get('secretName')} or the TLS Secret {sched_secret} is not "
                        "rendered")
    ports = {pt.get("name"): pt["containerPort"] for pt in s.get("ports") or []}
    if ports.get("issuer") != issuer_port:
        problems.append(f"{where}: container port 'issuer' is {ports.get('issuer')}, --issuer-listen port "
                        f"{issuer_port}")
    svc = [x for x in find(docs, "Service", "scheduler") if x["spec"].get("clusterIP") != "None"]
    if not any(pt.get("targetPort") == "issuer" and pt.get("port") == issuer_port
               for x in svc for pt in x["spec"]["ports"]):
        problems.append(f"{where}: no Service port {issuer_port} for the issuer (peers dial {url})")
    cluster, local = scheduler_grants(docs, sched_sa, ns)
    if cluster != {("authentication.k8s.io", "tokenreviews", "create")}:
        problems.append(f"scheduler RBAC: cluster-wide grants {sorted(cluster)}, expected only tokenreviews create")
    if local != {("", "pods", "get")}:
        problems.append(f"scheduler RBAC: grants in {ns} {sorted(local)}, expected only pods get")
    if sc.netpol is not None:
        cidrs = set(sc.netpol.get("node_cidrs") or [])
        reach = set()
        for n in find(docs, "NetworkPolicy"):
            for rule in n["spec"].get("ingress") or []:
                if any(pt.get("port") in (issuer_port, "issuer") for pt in rule.get("ports") or []):
                    reach |= {src["ipBlock"]["cidr"] for src in rule.get("from") or [] if "ipBlock" in src}
        if cidrs - reach:
            problems.append(f"NetworkPolicy: the nodes in {sorted(cidrs - reach)} cannot reach the issuer port "
                            f"{issuer_port}, so their peers never get a certificate")


def scheduler_grants(docs, sa, ns):
    """(apiGroup, resource, verb) granted to ServiceAccount ns/sa: cluster-wide, and
    in its namespace."""
    def bound(kind, role_kind):
        names = set()
        for b in find(docs, kind):
            if any(x.get("kind") == "ServiceAccount" and x.get("name") == sa and x.get("namespace") == ns
                   for x in b.get("subjects") or []) and b["roleRef"]["kind"] == role_kind:
                names.add(b["roleRef"]["name"])
        return [r for r in find(docs, role_kind) if r["metadata"]["name"] in names]

    def grants(roles):
        return {(g, res, verb) for r in roles for rule in r.get("rules") or []
                for g in rule.get("apiGroups") or [] for res in rule.get("resources") or []
                for verb in rule.get("verbs") or []}
    return grants(bound("ClusterRoleBinding", "ClusterRole")), grants(bound("RoleBinding", "Role"))


def check_ca_pair(ca, sched):
    """ca.key is the key of ca.crt, which is the serving certificate's CA."""
    out = []
    if "ca.crt" not in ca or "ca.key" not in ca:
        return [f"issuer CA Secret: lacks ca.crt or ca.key ({sorted(ca)})"]
    if ca["ca.crt"] != sched.get("ca.crt"):
        out.append("issuer CA Secret: its ca.crt is not the scheduler's: the certificates it signs would not "
                   "chain to the CA the scheduler requires")
    with tempfile.TemporaryDirectory() as tmp:
        def put(name, data):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            return path
        crt, key = put("ca.crt", ca["ca.crt"]), put("ca.key", ca["ca.key"])
        rc1, cert_pub = openssl("x509", "-in", crt, "-noout", "-pubkey")
        rc2, key_pub = openssl("pkey", "-in", key, "-pubout")
        if rc1 or rc2 or cert_pub != key_pub:
            out.append("issuer CA Secret: ca.key is not the key of ca.crt")
        if "tls.crt" in sched:
            rc, text = openssl("verify", "-purpose", "sslserver", "-CAfile", crt, put("s.crt", sched["tls.crt"]))
            if rc != 0:
                out.append(f"issuer CA Secret: the serving certificate does not verify against it: {text.strip()}")
    return out
