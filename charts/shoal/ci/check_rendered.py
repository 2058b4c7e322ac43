"""scripts/check-chart's driver: renders the Shoal chart in several scenarios
and checks what must hold for a node to work, beyond what a schema can see.

For every scenario (default values, each containerd preset, the ci/*-values.yaml
files): `helm template`, `kubernetes-validate --strict` against each Kubernetes
version, then the checks of checks.py:

- the init container's --mirror-url is http://<the peer's --mirror-listen>;
- the hosts directories mounted for configure, restore and the peer are the
  preset's (three presets tied to the constants in
  peer/src/containerd/layout.rs), from the right host paths, under --root,
  read-only where they should be; the peer's --containerd-hosts-dir lists them
  all, in order (network_checks.py);
- address families (network_checks.py): listeners bind [::] (0.0.0.0 with
  ipFamilies [IPv4]), Services carry ipFamilies and ipFamilyPolicy;
- --peer-tls-dir is a mount of the TLS Secret with ca.crt, tls.crt, tls.key; the
  generated certificate carries peer/src/tls.rs' SERVER_NAME, chains to the CA,
  and is good for client and server use;
- the scheduler's token file, ports, probes and Services agree with its flags;
- gRPC is mutual TLS: the scheduler gets --tls-dir (a Secret or a cert-manager
  csi-driver volume) and never --insecure-plaintext (only the dev-plaintext
  scenario asks for it), the peers dial https:// names the scheduler's
  certificate carries, and the scheduler's CA is the peers';
- identity: shared mode passes --allow-shared-identity with a certificate whose
  common name is shoal-peer; certManagerCSI passes no such switch and gives each
  peer pod a certificate naming it (${POD_NAME}), valid for shoal-peer, for
  client and server use, from the same issuer as the scheduler's; tokenReview
  (token_review.py) wires the peers' projected token, node name and issuer URL
  to the scheduler's issuer, its CA key, RBAC, Service port and NetworkPolicy;
- the NetworkPolicy (on unless the scenario turns it off) isolates the
  scheduler pods: gRPC only from the node CIDRs and the peer pods, the operator
  port only from the named namespaces;
- every selector selects the pods it is for; commonLabels reach every object;
- every --flag the chart passes exists in the built binaries (when given).

Then: values that must be refused are; metric names in the dashboard and docs
exist in the code; with the binaries, smoke_run.py runs the rendered commands;
and self_test.py breaks the default rendering on purpose, requiring every break
to be reported.

Not here: whether the pods run on a real cluster (none on the build machines).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

import checks
from checks import check_all, check_metric_names
from self_test import crio_mutations, csi_mutations, everything_on_mutations, self_test, token_review_mutations
from network_checks import ip_family_mutations
from smoke_run import smoke

# What each preset must mount, from docs/platforms/*.md. Three of them are also
# constants of the node setup code; main() checks they still agree.
PRESETS = {
    "containerd": ("/etc/containerd/config.toml", ["/etc/containerd/certs.d"], True),
    "eks": ("/etc/containerd/config.toml", ["/etc/containerd/certs.d", "/etc/docker/certs.d"], True),
    "k3s": ("/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            ["/var/lib/rancher/k3s/agent/etc/containerd/certs.d"], True),
    "rke2": ("/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
             ["/var/lib/rancher/rke2/agent/etc/containerd/certs.d"], True),
    "talos": ("/etc/cri/containerd.toml", ["/etc/cri/conf.d/hosts"], False),
    # CRI-O: the "config" is registries.conf, the one "hosts dir" its drop-in directory.
    "crio": ("/etc/containers/registries.conf", ["/etc/containers/registries.conf.d"], True),
}
RUST_CONSTANTS = {
    ("containerd", 0): "DEFAULT_CONFIG", ("containerd", 1): "DEFAULT_HOSTS_DIR",
    ("k3s", 0): "K3S_CONFIG", ("k3s", 1): "K3S_HOSTS_DIR",
    ("talos", 0): "TALOS_CONFIG", ("talos", 1): "TALOS_HOSTS_DIR",
}
NAMESPACE = "shoal-system"
# Scenarios the smoke run starts the binaries for (every name they dial is on
# loopback once translated; rke2 differs from k3s only in paths).
SMOKE = ("default", "preset-eks", "preset-k3s", "preset-talos", "preset-crio", "everything-on", "bring-your-own",
         "cert-manager-csi", "dev-plaintext")
# networkPolicy.nodeCIDRs is required while the policy is on (the default), so
# renderings that do not set it name one.
NODE_CIDR = "10.0.0.0/16"
NODES = ["--set", f"networkPolicy.nodeCIDRs={{{NODE_CIDR}}}"]


class Scenario:
    """One rendering: helm arguments and what the output must contain."""

    def __init__(self, name, args, preset="containerd", config=None, hosts=None, configure=None,
                 cleanup=True, tls_secret=None, token_secret=None, tolerate_all=True, labels=None,
                 identity="shared", plaintext=False, sched_tls_secret=None, netpol=None, operator_tls=False,
                 ip_families=None, ip_family_policy=None):
        p_config, p_hosts, p_configure = PRESETS[preset]
        self.name, self.args = name, args
        # containerd (hosts.toml) or crio (registries.conf, `shoal-peer containers`).
        self.runtime = "crio" if preset == "crio" else "containerd"
        self.config = config or p_config
        self.hosts = hosts or p_hosts
        self.configure = p_configure if configure is None else configure
        self.cleanup = cleanup and self.configure
        self.tls_secret, self.token_secret = tls_secret, token_secret
        self.tolerate_all, self.labels = tolerate_all, labels or {}
        # peer.identity.mode, scheduler.insecurePlaintext, scheduler.tls.existingSecret
        self.identity, self.plaintext, self.sched_tls_secret = identity, plaintext, sched_tls_secret
        # The NetworkPolicy: None (off), or what it must admit:
        # {"node_cidrs": [...], "namespaces": [...]} (operator and Prometheus namespaces).
        self.netpol = netpol
        # scheduler.operatorTLS: the operator API over TLS.
        self.operator_tls = operator_tls
        # ipFamilies and ipFamilyPolicy as the values set them.
        self.ip_families, self.ip_family_policy = ip_families or [], ip_family_policy


DEFAULT_NETPOL = {"node_cidrs": [NODE_CIDR], "namespaces": []}

SCENARIOS = [
    Scenario("default", NODES, netpol=DEFAULT_NETPOL),
    *[Scenario(f"preset-{p}", NODES + ["--set", f"containerd.preset={p}"], preset=p, netpol=DEFAULT_NETPOL)
      for p in PRESETS if p != "containerd"],
    Scenario("everything-on", ["-f", "ci/everything-on-values.yaml"], preset="eks", labels={"team": "platform"},
             ip_families=["IPv6", "IPv4"],
             netpol={"node_cidrs": ["10.20.0.0/16", "10.30.0.0/16", "fd00:20::/64"],
                     "namespaces": ["platform-ops", "monitoring"]}),
    Scenario("bring-your-own", ["-f", "ci/bring-your-own-values.yaml"],
             config="/opt/containerd/etc/config.toml", hosts=["/opt/containerd/etc/certs.d"], cleanup=False,
             tls_secret="cluster-peer-tls", token_secret="shoal-operator", tolerate_all=False,
             sched_tls_secret="cluster-scheduler-tls", netpol={"node_cidrs": ["fd00:10::/56"], "namespaces": []}),
    Scenario("cert-manager-csi", ["-f", "ci/cert-manager-csi-values.yaml"], identity="certManagerCSI",
             netpol={"node_cidrs": ["192.168.0.0/24"], "namespaces": ["shoal-operators"]}),
    Scenario("token-review", ["-f", "ci/token-review-values.yaml"], identity="tokenReview",
             netpol={"node_cidrs": ["10.40.0.0/16"], "namespaces": []}),
    Scenario("no-network-policy", ["--set", "networkPolicy.enabled=false"]),
    Scenario("ipv6-only", NODES + ["--set", "ipFamilies={IPv6}"], ip_families=["IPv6"], netpol=DEFAULT_NETPOL),
    Scenario("ipv4-only", NODES + ["--set", "ipFamilies={IPv4}", "--set", "ipFamilyPolicy=SingleStack"],
             ip_families=["IPv4"], ip_family_policy="SingleStack", netpol=DEFAULT_NETPOL),
    Scenario("dev-plaintext", NODES + ["--set", "scheduler.insecurePlaintext=true"], plaintext=True,
             netpol=DEFAULT_NETPOL),
    Scenario("operator-tls", ["--set", "networkPolicy.enabled=false", "--set", "scheduler.operatorTLS=true",
                              "--set", "metrics.serviceMonitor.enabled=true"], operator_tls=True),
]

# Values that must be refused (schema or template), with a word of the error;
# rendered after NODES, except the first (the defaults as they are).
BAD_VALUES = [
    ([], "networkPolicy.nodeCIDRs"),  # required while the policy is on
    (["--set", "containerd.preset=docker"], "containerd.preset"),
    (["--set", "peer.mirrorListen=0.0.0.0:7650"], "mirrorListen"),
    (["--set", "peer.mirrorListen=localhost"], "mirrorListen"),
    (["--set", "peer.mirrorListen=10.0.0.5:7650"], "mirrorListen"),  # a node IP: reachable from other hosts
    (["--set", "peer.mirrorListen=[::]:7650"], "mirrorListen"),
    (["--set", "peer.cacheLowWatermark=0.95"], "cacheLowWatermark"),
    (["--set", "containerd.hostsDirs[0]=relative/dir"], "hostsDirs"),
    (["--set", "peer.cacheSize=10GB"], "cacheSize"),
    (["--set", "logFormat=xml"], "logFormat"),
    (["--set", "ipFamilies={IPv5}"], "ipFamilies"),
    (["--set", "ipFamilies={IPv4,IPv6}", "--set", "ipFamilyPolicy=SingleStack"], "SingleStack"),
    (["--set", "ipFamilies={IPv6}", "--set", "ipFamilyPolicy=RequireDualStack"], "RequireDualStack"),
    (["--set", "ipFamilyPolicy=DualStack"], "ipFamilyPolicy"),
    (["--set", "scheduler.colour=blue"], "colour"),
    (["--set", "scheduler.operatorToken.value=too-short"], "operatorToken"),  # the scheduler wants >= 16
    (["--set", "networkPolicy.nodeCIDRs[0]=10.0.0.1"], "nodeCIDRs"),  # not a CIDR
    (["--set", "networkPolicy.operatorNamespaces[0]=Ops_Team"], "operatorNamespaces"),
    (["--set", "metrics.serviceMonitor.enabled=true"], "prometheusNamespaces"),  # Prometheus could not scrape
    (["--set", "peer.identity.mode=tokenReview", "--set", "scheduler.insecurePlaintext=true"],
     "peer.identity.mode=tokenReview needs TLS"),
    (["--set", "peer.identity.mode=tokenReview", "--set", "scheduler.tls.existingSecret=mine"], "existingCASecret"),
    (["--set", "peer.identity.mode=tokenReview", "--set", "peer.identity.tokenReview.tokenExpirationSeconds=60"],
     "tokenExpirationSeconds"),
    (["--set", "scheduler.extraArgs[0]=--issuer-ca-dir=/ca"], "peer.identity.mode"),
    (["--set", "peer.identity.mode=certManagerCSI"], "issuer.name"),
    (["--set", "peer.identity.mode=certManagerCSI", "--set", "peer.identity.certManagerCSI.issuer.name=ca",
      "--set", "peer.identity.certManagerCSI.duration=3d"], "duration"),
    (["--set", "peer.identity.mode=certManagerCSI", "--set", "peer.identity.certManagerCSI.issuer.name=ca",
      "--set", "peer.tls.existingSecret=mine"], "peer.tls.existingSecret"),
    (["--set", "peer.tls.existingSecret=mine"], "scheduler.tls.existingSecret"),  # cannot sign with their CA
    (["--set", "scheduler.tls.existingSecret=mine"], "peer.tls.existingSecret"),  # a new CA cannot match it
    (["--set", "peer.extraSchedulers[0]=http://standby.shoal-system.svc.cluster.local:7600"], "extraSchedulers"),
    (["--set", "scheduler.extraArgs[0]=--insecure-plaintext"], "scheduler.insecurePlaintext"),
    (["--set", "scheduler.operatorTLS=true", "--set", "scheduler.insecurePlaintext=true"], "scheduler.operatorTLS"),
    (["--set", "scheduler.extraEnv[0].name=SHOAL_ALLOW_SHARED_IDENTITY", "--set", "scheduler.extraEnv[0].value=1"],
     "peer.identity.mode"),
]

def rust_const(path, name):
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', open(path).read())
    if not m:
        sys.exit(f"check-chart: cannot find const {name} in {path}")
    return m.group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--helm", required=True)
    ap.add_argument("--kubernetes-validate", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--repo", required=True, help="the workspace root (for the Rust constants)")
    ap.add_argument("--kube-versions", default="1.28.0,1.34.0")
    ap.add_argument("--bin-dir", help="directory with built shoal-peer and shoal-scheduler")
    a = ap.parse_args()

    checks.SERVER_NAME = rust_const(os.path.join(a.repo, "peer/src/tls.rs"), "SERVER_NAME")
    failures = []
    cfg_rs = os.path.join(a.repo, "peer/src/containerd/layout.rs")
    for (preset, i), const in RUST_CONSTANTS.items():
        want = PRESETS[preset][i] if i == 0 else PRESETS[preset][i][0]
        if rust_const(cfg_rs, const) != want:
            failures.append(f"preset {preset}: {want} differs from {const} in {cfg_rs}")

    def render(args):
        return subprocess.run([a.helm, "template", "shoal", a.chart, "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True, cwd=a.chart)

    rendered = {}
    for sc in SCENARIOS:
        r = render(sc.args)
        if r.returncode != 0:
            failures.append(f"{sc.name}: helm template failed: {r.stderr.strip()}")
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(r.stdout)
        try:
            for v in a.kube_versions.split(","):
                kv = subprocess.run([a.kubernetes_validate, "--strict", "--quiet", "--no-warn", "-k", v, f.name],
                                    capture_output=True, text=True)
                if kv.returncode != 0:
                    failures.append(f"{sc.name}: kubernetes-validate --strict -k {v}:\n{kv.stdout}{kv.stderr}")
        finally:
            os.unlink(f.name)
        problems = check_all(docs, sc, a.bin_dir)
        failures += [f"{sc.name}: {p}" for p in problems]
        print(f"check-chart: {sc.name}: {len(docs)} objects, {len(problems)} problems")
        rendered[sc.name] = (docs, sc)

    refused = 0
    for i, (args, word) in enumerate(BAD_VALUES):
        r = render(args if i == 0 else NODES + args)
        if r.returncode == 0 or word not in r.stderr:
            failures.append(f"values {' '.join(args)} were not refused with a message naming {word}")
        else:
            refused += 1
    print(f"check-chart: {refused} of {len(BAD_VALUES)} bad values refused")

    failures += check_metric_names(a.repo, a.chart)
    if a.bin_dir:
        failures += smoke(render, [sc for sc in SCENARIOS if sc.name in SMOKE], a.bin_dir)

    print("check-chart: self-test, each break must be detected:")
    for name, cases in (("default", None), ("everything-on", everything_on_mutations()),
                        ("cert-manager-csi", csi_mutations()), ("token-review", token_review_mutations()),
                        ("ipv6-only", ip_family_mutations()), ("preset-crio", crio_mutations())):
        if name not in rendered:
            failures.append(f"self-test: the {name} rendering failed, so its breaks were not tried")
            continue
        failures += self_test(*rendered[name], cases)

    if failures:
        print("\ncheck-chart: FAILED", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("check-chart: rendered chart OK")


if __name__ == "__main__":
    main()
