"""Runs the built binaries with exactly the commands and arguments the chart
renders, on loopback, in a directory standing in for the node (part of
scripts/check-chart, when the binaries are found).

For a rendering: the host's file system is a temp dir H holding a containerd
config whose config_path names the preset's hosts directories and one existing
hosts.toml. Each container's arguments are translated the way its volume mounts
would (a path under a hostPath mount -> H/<host path>, under a Secret -> a dir
holding the Secret's files, `--root=/host` -> H, `$(NODE_IP)` -> 127.0.0.1, the
scheduler's Service name -> 127.0.0.1, as cluster DNS would, `$(NODE_ZONE)` ->
empty, as on clusters without pod topology labels). Then:

1. the init container's `configure` exits 0 and puts http://<mirror> first in
   the existing hosts.toml;
2. the scheduler starts and gets ready; the peer starts, gets ready on its
   probe port, its mirror answers GET /v2/, and it joins the scheduler
   (`shoalctl peers`, as NOTES.txt says);
3. both stop on SIGTERM with status 0;
4. the restore hook's `restore` exits 0 and the node's files are byte for byte
   what they were before configure.

Not here: a real pull (peer/tests and tests/ do that with containerd).
"""

import base64
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import yaml

from checks import container, find, flags, volume

# An existing registry file the node had before Shoal (kept and restored exactly).
EXISTING_HOSTS_TOML = """# Pull-through cache run by the platform team.
server = "https://registry-1.docker.io"

[host."https://cache.example.com"]
  capabilities = ["pull", "resolve"]
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


class Node:
    """The stand-in for one node: host dir, Secret dirs, translated commands."""

    def __init__(self, tmp, docs, bin_dir, mirror):
        self.tmp, self.docs, self.bin_dir = tmp, docs, bin_dir
        self.host = os.path.join(tmp, "host")
        self.secrets = {}
        self.mirror = mirror

    def secret_dir(self, name):
        if name in self.secrets:
            return self.secrets[name]
        d = os.path.join(self.tmp, "secret-" + name)
        os.makedirs(d)
        rendered = [s for s in find(self.docs, "Secret") if s["metadata"]["name"] == name]
        if rendered:
            for k, v in (rendered[0].get("data") or {}).items():
                with open(os.path.join(d, k), "wb") as f:
                    f.write(base64.b64decode(v))
        else:  # an existing Secret the operator made: make one as the docs say
            r = subprocess.run([os.path.join(self.bin_dir, "shoal-peer"), "tls", "init", d],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise ValueError(f"shoal-peer tls init failed: {tail(r.stderr)}")
            with open(os.path.join(d, "token"), "w") as f:
                f.write("smoke-test-token")
        self.secrets[name] = d
        return d

    def translate(self, pod, c, value):
        # Most clusters give pods no zone label: NODE_ZONE is then empty.
        value = value.replace("$(NODE_IP)", "127.0.0.1").replace("$(NODE_ZONE)", "")
        value = re.sub(r"^http://[a-z0-9-]+\.[a-z0-9-]+\.svc\.[a-z.]+:", "http://127.0.0.1:", value)
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
            return self.secret_dir(v["secret"]["secretName"]) + rest
        d = os.path.join(self.tmp, "emptydir-" + v["name"])
        os.makedirs(d, exist_ok=True)
        return d + rest

    def command(self, pod, c):
        args = []
        for a in c.get("args") or []:
            if a.startswith("--") and "=" in a:
                k, _, v = a.partition("=")
                args.append(f"{k}={self.translate(pod, c, v)}")
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
            f.write('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
                    f'  config_path = "{":".join(sc.hosts)}"\n')
        for d in sc.hosts:
            os.makedirs(node.host + d, exist_ok=True)
        existing = os.path.join(node.host + sc.hosts[0], "docker.io", "hosts.toml")
        os.makedirs(os.path.dirname(existing))
        with open(existing, "w") as f:
            f.write(EXISTING_HOSTS_TOML)
        # What restore must put back: containerd's directories (not the data dir).
        setup_dirs = [os.path.dirname(sc.config), *sc.hosts]
        before = snapshot(node.host, setup_dirs)

        peer_ds = find(docs, "DaemonSet", "peer", hook=False)[0]["spec"]["template"]["spec"]
        configure = container(peer_ds, "configure", init=True)
        if configure:
            r = subprocess.run(node.command(peer_ds, configure), env=node.env(configure),
                               capture_output=True, text=True, timeout=60)
            text = open(existing).read()
            hosts = re.findall(r'^\[host\."([^"]+)"\]', text, re.M)
            if r.returncode != 0:
                problems.append(f"{name}: configure exited {r.returncode}: {tail(r.stderr)}")
            elif hosts[:1] != [f"http://{mirror}"] or "https://cache.example.com" not in hosts:
                problems.append(f"{name}: after configure, docker.io's hosts are {hosts}")

        sched_pod = find(docs, "Deployment", "scheduler")[0]["spec"]["template"]["spec"]
        sched_c = container(sched_pod, "scheduler")
        peer_c = container(peer_ds, "peer")
        http_port = int(flags(peer_c["args"])["--http-listen"][0].rsplit(":", 1)[1])
        procs = []
        try:
            sched = subprocess.Popen(node.command(sched_pod, sched_c), env=node.env(sched_c),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(("scheduler", sched))
            err = wait_for(f"http://127.0.0.1:{api}/readyz", sched)
            if err:
                problems.append(f"{name}: scheduler {err}")
                return problems
            peer = subprocess.Popen(node.command(peer_ds, peer_c), env=node.env(peer_c),
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
            r = subprocess.run(node.command(pod, restore), env=node.env(restore),
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
