"""Runs the built binaries with exactly the commands and arguments the chart
renders, on loopback, in a directory standing in for the node (part of
scripts/check-chart, when the binaries are found).

For a rendering: the host's file system is a temp dir H holding a containerd
config whose config_path names the preset's hosts directories and one existing
hosts.toml. Each container's arguments are translated the way its volume mounts
would (a path under a hostPath mount -> H/<host path>, under a Secret -> a dir
holding the Secret's files, under a cert-manager csi-driver volume -> a dir
holding what the driver would write, `--root=/host` -> H, `$(NODE_IP)` ->
127.0.0.1, `$(NODE_ZONE)` -> empty, as on clusters without pod topology labels).
The peer keeps the scheduler URL the chart gives it: it runs in its own mount
namespace (unshare) whose /etc/hosts maps the Service's name to 127.0.0.1, as
cluster DNS would, so that it verifies the scheduler's certificate for the very
name it dials. Then:

1. the init container's `configure` exits 0 and puts http://<mirror> first in
   the existing hosts.toml;
2. the scheduler starts and gets ready; the peer starts, gets ready on its
   probe port, its mirror answers GET /v2/, and it joins the scheduler over
   mutual TLS (`shoalctl peers`, as NOTES.txt says), under its certificate's
   common name when that names the pod (per-node identity);
3. both stop on SIGTERM with status 0;
4. the restore hook's `restore` exits 0 and the node's files are byte for byte
   what they were before configure.

Stand-ins, as the operator or the cluster would make them:
- an existing Secret (scheduler.tls.existingSecret, peer.tls.existingSecret) is
  made as docs/install.md says: `shoal-peer tls init` for the CA and the peer
  certificate, openssl for the scheduler's from that CA;
- a csi.cert-manager.io volume is filled as cert-manager's csi-driver would
  from its volumeAttributes (common name and DNS names with ${POD_NAME} and the
  other variables expanded, key usages, file names) with a certificate signed
  by a throw-away CA standing in for the issuer (one per issuer reference).
  Not tested: the driver itself, the issuer, renewal.

Not here: a real pull (peer/tests and tests/ do that with containerd).
"""

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import uuid

import yaml

from checks import CSI, container, csi_list, find, flags, service_names, volume

NAMESPACE = "shoal-system"  # check_rendered.py renders into it

# An existing registry file the node had before Shoal (kept and restored exactly).
EXISTING_HOSTS_TOML = """# Pull-through cache run by the platform team.
server = "https://registry-1.docker.io"

[host."https://cache.example.com"]
  capabilities = ["pull", "resolve"]
"""


# The same for a CRI-O node: registries.conf with docker.io's pull-through cache.
EXISTING_REGISTRIES_CONF = """# Pull-through cache run by the platform team.
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "cache.example.com"
"""


def tail(text):
    """The lines of a failed command's stderr worth showing."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return " | ".join((errors or lines)[-3:])


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def port_args(ports):
    mirror, quic, http, grpc, api = ports
    return ["--set", f"peer.mirrorListen=127.0.0.1:{mirror}", "--set", f"peer.quicPort={quic}",
            "--set", f"peer.httpPort={http}", "--set", f"scheduler.grpcPort={grpc}",
            "--set", f"scheduler.httpPort={api}"]


def snapshot(root, under):
    """Mode and bytes of everything below root + each of `under` (host paths)."""
    out = {}
    for top in under:
        out.update(_walk(root, root + top))
    return out


def _walk(root, top):
    out = {}
    for d, dirs, files in os.walk(top):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, None if os.path.isdir(p) else open(p, "rb").read())
    return out


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode(errors="replace")


def wait_for(url, proc, seconds=30):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before {url} answered"
        try:
            if get(url)[0] == 200:
                return None
        except OSError as e:
            last = e
        time.sleep(0.2)
    return f"{url} did not answer 200 within {seconds}s ({last})"


def run_openssl(*args):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise ValueError(f"openssl {args[0]} failed: {tail(r.stderr)}")
    return r.stdout


def sign(ca_dir, out_dir, common_name, dns_names, ext_usages, key_usages, days=1):
    """A PKCS#8 EC key and a certificate signed by ca_dir/ca.{crt,key}, written to
    out_dir/tls.{key,crt}, with ca_dir/ca.crt copied to out_dir/ca.crt: the
    openssl commands of docs/install.md ("Argo CD")."""
    os.makedirs(out_dir, exist_ok=True)
    key, csr, crt = (os.path.join(out_dir, n) for n in ("tls.key", "tls.csr", "tls.crt"))
    run_openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", f"/CN={common_name}" if common_name else "/", "-keyout", key, "-out", csr)
    ext = os.path.join(out_dir, "ext.cnf")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n")
        if key_usages:
            f.write(f"keyUsage=critical,{','.join(key_usages)}\n")
        if ext_usages:
            f.write(f"extendedKeyUsage={','.join(ext_usages)}\n")
        if dns_names:
            f.write(f"subjectAltName={','.join('DNS:' + n for n in dns_names)}\n")
    run_openssl("x509", "-req", "-in", csr, "-CA", os.path.join(ca_dir, "ca.crt"),
                "-CAkey", os.path.join(ca_dir, "ca.key"), "-set_serial", "0x" + secrets.token_hex(16),
                "-days", str(days), "-extfile", ext, "-out", crt)
    os.unlink(csr)
    os.unlink(ext)
    shutil.copy(os.path.join(ca_dir, "ca.crt"), os.path.join(out_dir, "ca.crt"))


# csi.cert-manager.io/key-usages -> openssl's extension values.
EXT_USAGES = {"server auth": "serverAuth", "client auth": "clientAuth"}
KEY_USAGES = {"digital signature": "digitalSignature", "key encipherment": "keyEncipherment"}


def expand(text, variables):
    """os.Expand, as the csi-driver applies it to common-name and dns-names; an
    unknown variable is an error there too."""
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise ValueError(f"csi-driver stand-in: undefined variable {name!r} in {text!r}")
        return variables[name]
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z0-9_]+)", one, text)


def hosts_wrapper(tmp, names, cmd):
    """cmd in its own mount namespace whose /etc/hosts maps names to 127.0.0.1."""
    path = os.path.join(tmp, "etc-hosts")
    with open(path, "w") as f:
        f.write("127.0.0.1 localhost\n::1 localhost\n" + "".join(f"127.0.0.1 {n}\n" for n in names))
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', path, *cmd]


def can_unshare():
    try:
        r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    return None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")


class Node:
    """The stand-in for one node: host dir, Secret and csi-driver dirs, translated commands."""

    def __init__(self, tmp, docs, bin_dir, mirror):
        self.tmp, self.docs, self.bin_dir = tmp, docs, bin_dir
        self.host = os.path.join(tmp, "host")
        self.secrets = {}
        self.csi = {}
        self.issuers = {}
        self.mirror = mirror
        peer = container(find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"], "peer")
        self.scheduler_host = urllib.parse.urlparse(flags(peer["args"])["--scheduler"][0]).hostname

    def operator_ca(self):
        """The operator's own CA and shared peer certificate, for existing Secrets
        (docs/install.md: `shoal-peer tls init`)."""
        d = os.path.join(self.tmp, "operator-ca")
        if not os.path.isdir(d):
            r = subprocess.run([os.path.join(self.bin_dir, "shoal-peer"), "tls", "init", d],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise ValueError(f"shoal-peer tls init failed: {tail(r.stderr)}")
        return d

    def secret_dir(self, name, flag):
        if name in self.secrets:
            return self.secrets[name]
        d = os.path.join(self.tmp, "secret-" + name)
        rendered = [s for s in find(self.docs, "Secret") if s["metadata"]["name"] == name]
        if rendered:
            os.makedirs(d)
            for k, v in (rendered[0].get("data") or {}).items():
                with open(os.path.join(d, k), "wb") as f:
                    f.write(base64.b64decode(v))
        elif flag == "--tls-dir":  # the scheduler's, from the operator's CA
            sign(self.operator_ca(), d, f"{self.scheduler_host.split('.')[0]}", service_names(self.scheduler_host),
                 ["serverAuth"], ["digitalSignature"])
        elif flag == "--peer-tls-dir":
            os.makedirs(d)
            for f in ("ca.crt", "tls.crt", "tls.key"):
                shutil.copy(os.path.join(self.operator_ca(), f), os.path.join(d, f))
        else:  # the operator token
            os.makedirs(d)
            with open(os.path.join(d, "token"), "w") as f:
                f.write("smoke-test-token")
        self.secrets[name] = d
        return d

    def issuer_ca(self, attrs):
        """A throw-away CA standing in for one cert-manager issuer reference."""
        ref = tuple(attrs.get(CSI + k, "") for k in ("issuer-name", "issuer-kind", "issuer-group"))
        if ref not in self.issuers:
            d = os.path.join(self.tmp, f"issuer-{len(self.issuers)}")
            os.makedirs(d)
            run_openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-subj", f"/CN=stand-in for {ref[1]} {ref[0]}", "-days", "2",
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                        "-keyout", os.path.join(d, "ca.key"), "-out", os.path.join(d, "ca.crt"))
            self.issuers[ref] = d
        return self.issuers[ref]

    def csi_dir(self, pod, pod_name, v):
        """What cert-manager's csi-driver writes into this volume for this pod."""
        key = (pod_name, v["name"])
        if key in self.csi:
            return self.csi[key]
        attrs = v["csi"].get("volumeAttributes") or {}
        variables = {"POD_NAME": pod_name, "POD_NAMESPACE": NAMESPACE, "POD_UID": str(uuid.uuid4()),
                     "SERVICE_ACCOUNT_NAME": pod.get("serviceAccountName") or "default"}
        usages = csi_list(attrs, "key-usages") or ["digital signature", "key encipherment"]
        unknown = [u for u in usages if u not in EXT_USAGES and u not in KEY_USAGES]
        if unknown:
            raise ValueError(f"csi-driver stand-in: key usages {unknown} not handled")
        d = os.path.join(self.tmp, f"csi-{pod_name}-{v['name']}")
        sign(self.issuer_ca(attrs), d, expand(attrs.get(CSI + "common-name", ""), variables),
             [expand(n, variables) for n in csi_list(attrs, "dns-names")],
             [EXT_USAGES[u] for u in usages if u in EXT_USAGES], [KEY_USAGES[u] for u in usages if u in KEY_USAGES])
        for k, default in (("ca-file", "ca.crt"), ("certificate-file", "tls.crt"), ("privatekey-file", "tls.key")):
            if attrs.get(CSI + k, default) != default:
                os.rename(os.path.join(d, default), os.path.join(d, attrs[CSI + k]))
        self.csi[key] = d
        return d

    def translate(self, pod, pod_name, c, flag, value):
        if flag in ("--containerd-hosts-dir", "--containers-certs-dir"):
            # A `:`-separated list of host paths, each translated.
            return ":".join(self.translate_one(pod, pod_name, c, flag, v) for v in value.split(":"))
        return self.translate_one(pod, pod_name, c, flag, value)

    def translate_one(self, pod, pod_name, c, flag, value):
        # Most clusters give pods no zone label: NODE_ZONE is then empty.
        value = value.replace("$(NODE_IP)", "127.0.0.1").replace("$(NODE_ZONE)", "")
        if value == "/host":
            return self.host
        best = None
        for m in c.get("volumeMounts") or []:
            mp = m["mountPath"].rstrip("/")
            if (value == mp or value.startswith(mp + "/")) and (not best or len(mp) > len(best["mountPath"])):
                best = m
        if not best:
            return value
        rest = value[len(best["mountPath"].rstrip("/")):]
        v = volume(pod, best["name"])
        if "hostPath" in v:
            return self.host + v["hostPath"]["path"] + rest
        if "secret" in v:
            return self.secret_dir(v["secret"]["secretName"], flag) + rest
        if "csi" in v:
            return self.csi_dir(pod, pod_name, v) + rest
        d = os.path.join(self.tmp, "emptydir-" + v["name"])
        os.makedirs(d, exist_ok=True)
        return d + rest

    def command(self, pod, pod_name, c):
        args = []
        for a in c.get("args") or []:
            if a.startswith("--") and "=" in a:
                k, _, v = a.partition("=")
                args.append(f"{k}={self.translate(pod, pod_name, c, k, v)}")
            else:
                args.append(a)
        return [os.path.join(self.bin_dir, c["command"][0]), *args]

    def env(self, c):
        env = dict(os.environ)
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
        return env


def run_scenario(name, docs, sc, bin_dir, mirror, api):
    """Returns the problems found running this rendering's commands."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="shoal-smoke-") as tmp:
        node = Node(tmp, docs, bin_dir, mirror)
        # The node as the kubelet leaves it: containerd's config, the hostPath dirs.
        cfg = node.host + sc.config
        os.makedirs(os.path.dirname(cfg))
        with open(cfg, "w") as f:
            if sc.runtime == "crio":
                f.write(EXISTING_REGISTRIES_CONF)
            else:
                f.write('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
                        f'  config_path = "{":".join(sc.hosts)}"\n')
        for d in sc.hosts:
            os.makedirs(node.host + d, exist_ok=True)
        if sc.runtime == "crio":
            existing = os.path.join(node.host + sc.hosts[0], "zz-shoal.conf")
        else:
            existing = os.path.join(node.host + sc.hosts[0], "docker.io", "hosts.toml")
            os.makedirs(os.path.dirname(existing))
            with open(existing, "w") as f:
                f.write(EXISTING_HOSTS_TOML)
        # What restore must put back: containerd's directories (not the data dir).
        setup_dirs = [os.path.dirname(sc.config), *sc.hosts]
        before = snapshot(node.host, setup_dirs)

        peer_obj = find(docs, "DaemonSet", "peer", hook=False)[0]
        peer_ds = peer_obj["spec"]["template"]["spec"]
        # Pod names as the controllers make them (the csi-driver's ${POD_NAME}).
        peer_name = f"{peer_obj['metadata']['name']}-{secrets.token_hex(3)[:5]}"
        sched_obj = find(docs, "Deployment", "scheduler")[0]
        sched_name = f"{sched_obj['metadata']['name']}-{secrets.token_hex(5)[:9]}-{secrets.token_hex(3)[:5]}"
        configure = container(peer_ds, "configure", init=True)
        if configure:
            r = subprocess.run(node.command(peer_ds, peer_name, configure), env=node.env(configure),
                               capture_output=True, text=True, timeout=60)
            text = open(existing).read() if os.path.exists(existing) else ""
            if sc.runtime == "crio":
                # docker.io's entry: the mirror first (namespaced), the node's cache kept.
                hosts = re.findall(r'^location = "([^"]+)"', text, re.M)
                hosts = [f"http://{h[:-len('/docker.io')]}" if h.endswith("/docker.io") else f"https://{h}"
                         for h in hosts[1:3]]
            else:
                hosts = re.findall(r'^\[host\."([^"]+)"\]', text, re.M)
            if r.returncode != 0:
                problems.append(f"{name}: configure exited {r.returncode}: {tail(r.stderr)}")
            elif hosts[:1] != [f"http://{mirror}"] or "https://cache.example.com" not in hosts:
                problems.append(f"{name}: after configure, docker.io's hosts are {hosts}")

        sched_pod = sched_obj["spec"]["template"]["spec"]
        sched_c = container(sched_pod, "scheduler")
        peer_c = container(peer_ds, "peer")
        http_port = int(flags(peer_c["args"])["--http-listen"][0].rsplit(":", 1)[1])
        procs = []
        try:
            sched = subprocess.Popen(node.command(sched_pod, sched_name, sched_c), env=node.env(sched_c),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(("scheduler", sched))
            err = wait_for(f"http://127.0.0.1:{api}/readyz", sched)
            if err:
                problems.append(f"{name}: scheduler {err}")
                return problems
            # Cluster DNS for the Service name the peer dials (and verifies).
            peer_cmd = hosts_wrapper(tmp, [node.scheduler_host], node.command(peer_ds, peer_name, peer_c))
            peer = subprocess.Popen(peer_cmd, env=node.env(peer_c),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(("peer", peer))
            err = wait_for(f"http://127.0.0.1:{http_port}/readyz", peer)
            if err:
                problems.append(f"{name}: peer {err}")
                return problems
            try:
                if get(f"http://{mirror}/v2/")[0] != 200:
                    problems.append(f"{name}: the mirror at {mirror} does not answer GET /v2/ with 200")
            except OSError as e:
                problems.append(f"{name}: the mirror at {mirror} does not answer: {e}")
            deadline, listed = time.monotonic() + 20, ""
            while time.monotonic() < deadline:
                r = subprocess.run([os.path.join(bin_dir, "shoalctl"), "--scheduler", f"http://127.0.0.1:{api}",
                                    "-o", "json", "peers"], capture_output=True, text=True, timeout=10)
                listed = r.stdout
                if r.returncode == 0 and json.loads(listed).get("peers"):
                    break
                time.sleep(0.3)
            else:
                problems.append(f"{name}: the peer did not join the scheduler (shoalctl peers: {listed.strip()[:300]})")
                listed = ""
            # A certificate naming the pod: that name is the peer's id.
            attrs = ((volume(peer_ds, "peer-tls") or {}).get("csi") or {}).get("volumeAttributes") or {}
            if listed and attrs.get(CSI + "common-name") == "${POD_NAME}":
                ids = [p.get("id") for p in json.loads(listed)["peers"]]
                if ids != [peer_name]:
                    problems.append(f"{name}: the peer joined as {ids}, not as its certificate's common name "
                                    f"{peer_name}")
        finally:
            for what, p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    problems.append(f"{name}: {what} did not stop within 20s of SIGTERM")
                if p.returncode not in (0, -signal.SIGKILL):
                    problems.append(f"{name}: {what} exited {p.returncode}: {tail(p.stderr.read())}")

        hook = find(docs, "DaemonSet", "restore", hook=True)
        if configure and hook:
            pod = hook[0]["spec"]["template"]["spec"]
            restore = container(pod, "restore", init=True)
            r = subprocess.run(node.command(pod, f"{hook[0]['metadata']['name']}-smoke", restore),
                               env=node.env(restore),
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                problems.append(f"{name}: restore exited {r.returncode}: {tail(r.stderr)}")
            elif snapshot(node.host, setup_dirs) != before:
                after = snapshot(node.host, setup_dirs)
                diff = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                problems.append(f"{name}: after restore the node differs from before configure: {diff[:10]}")
    return problems


def smoke(render, scenarios, bin_dir):
    """Renders each scenario with free loopback ports and runs it; returns problems."""
    err = can_unshare()
    if err:
        return [f"smoke run: cannot give the peer an /etc/hosts of its own (unshare --user --map-root-user "
                f"--mount: {err}), so it cannot dial the scheduler by its Service name"]
    problems = []
    for sc in scenarios:
        ports = free_ports(5)
        r = render(sc.args + port_args(ports))
        if r.returncode != 0:
            problems.append(f"{sc.name}: helm template with test ports failed: {r.stderr.strip()}")
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        try:
            found = run_scenario(sc.name, docs, sc, bin_dir, f"127.0.0.1:{ports[0]}", ports[4])
        except (OSError, subprocess.SubprocessError, KeyError, IndexError, ValueError) as e:
            found = [f"{sc.name}: smoke run could not go on: {type(e).__name__}: {e}"]
        print(f"check-chart: smoke run {sc.name}: " + ("OK" if not found else f"{len(found)} problems"))
        problems += found
    return problems
