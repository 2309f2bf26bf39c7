#!/usr/bin/env python3
"""Checks the fields of the DaemonSet that decide whether the probe can load
with the least privilege (the schema check cannot tell): hostPID, dropped
capabilities plus BPF, PERFMON and SYS_PTRACE only, not privileged, read-only root,
tracefs and the plugins directory mounted, probes, requests and limits."""
import sys

import yaml


def fail(msg):
    sys.exit(f"FAIL: {sys.argv[1]}: {msg}")


docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = next((d for d in docs if d.get("kind") == "DaemonSet"), None) or fail("no DaemonSet")
spec = ds["spec"]["template"]["spec"]
spec.get("hostPID") is True or fail("hostPID must be true")
(c,) = spec["containers"]
sc = c["securityContext"]
sc.get("privileged") in (False, None) or fail("must not be privileged")
sc.get("readOnlyRootFilesystem") is True or fail("root filesystem must be read-only")
sc.get("allowPrivilegeEscalation") is False or fail("allowPrivilegeEscalation must be false")
sc["capabilities"]["drop"] == ["ALL"] or fail("must drop ALL capabilities")
sorted(sc["capabilities"]["add"]) == ["BPF", "PERFMON", "SYS_PTRACE"] or fail("must add exactly BPF, PERFMON and SYS_PTRACE")
mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
volumes = {v["name"]: v for v in spec["volumes"]}
for path in ("/var/run/scope/plugins", "/sys/kernel/tracing"):
    m = mounts.get(path) or fail(f"{path} is not mounted")
    volumes[m["name"]]["hostPath"]["path"] == path or fail(f"{path} must come from the host")
mounts["/sys/kernel/tracing"].get("readOnly") is True or fail("tracefs should be read-only")
for kind in ("/lib/modules", "/usr/src"):
    kind not in mounts or fail(f"{kind} must not be needed")
sock = "--socket=/var/run/scope/plugins/http-statistics/http-statistics.sock"
sock in c["args"] or fail("the socket must be under the plugins directory")
for probe in ("livenessProbe", "readinessProbe"):
    cmd = c[probe]["exec"]["command"]
    cmd[:2] == ["/scope-http-statistics", "--healthcheck"] and sock in cmd or fail(f"{probe} must run --healthcheck")
# Prometheus: the named port, the address the daemon listens on and the
# scrape annotations must agree.
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
"metrics" in ports or fail("no containerPort named metrics")
f"--metrics-address=0.0.0.0:{ports['metrics']}" in c["args"] or fail("--metrics-address must match the metrics port")
notes = ds["spec"]["template"]["metadata"].get("annotations", {})
notes.get("prometheus.io/scrape") == "true" or fail("prometheus.io/scrape must be \"true\"")
notes.get("prometheus.io/port") == str(ports["metrics"]) or fail("prometheus.io/port must be the metrics port")
for kind in ("requests", "limits"):
    set(c["resources"][kind]) >= {"cpu", "memory"} or fail(f"resources.{kind} needs cpu and memory")
print("ok: DaemonSet fields: hostPID, BPF+PERFMON+SYS_PTRACE only, read-only root, mounts, probes, limits, metrics port")
