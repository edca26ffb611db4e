#!/usr/bin/env python3
"""Checks on `helm template` output of the statecar chart (called by .ci/deploy-checks.sh).

  check_render.py split RENDERED OUTDIR
      Writes OUTDIR/builtin.yaml (core Kubernetes kinds, for kubernetes-validate) and
      OUTDIR/crd.json (monitoring.coreos.com kinds, validated separately); prints the counts.
  check_render.py crd-strict CRD_JSON
      Rejects fields the chart does not mean to set on ServiceMonitor / PrometheusRule (the CRD
      model validator checks types but allows unknown fields).
  check_render.py wiring RENDERED OUTDIR [--expect-mode native|regular]
      Checks that each pod's app talks to statecar where statecar listens, that probes, scrape
      annotations, metrics Service, ServiceMonitor, Secret references and the config checksum all
      agree, and writes each ConfigMap's statecar.toml plus the sidecar's plain env to OUTDIR for
      `statecar check-config`.
  check_render.py dashboard DASHBOARD_JSON [RENDERED...]
      Checks the Grafana dashboard: valid JSON, unique panel ids, templated datasource, only known
      statecar_ metrics; and that a rendered dashboard ConfigMap carries the file unchanged.

Only PyYAML is needed (kubernetes-validate depends on it).
"""

import hashlib
import ipaddress
import json
import os
import re
import sys
from urllib.parse import urlsplit

import yaml

# Metric names the dashboard and alerts may use (telemetry.rs; issue 4). A histogram's series
# carry _bucket/_sum/_count suffixes.
KNOWN_METRICS = {
    "statecar_up",
    "statecar_commands_total",
    "statecar_command_duration_seconds",
    "statecar_upstream_duration_seconds",
    "statecar_client_connections",
    "statecar_clients_rejected_total",
    "statecar_commands_rejected_total",
    "statecar_auth_failures_total",
    "statecar_upstream_up",
    "statecar_upstream_connects_total",
    "statecar_upstream_reconnects_total",
    "statecar_upstream_errors_total",
    "statecar_upstream_shared_connections",
    "statecar_upstream_leased_in_use",
    "statecar_upstream_pool_max",
    "statecar_upstream_lease_waits_total",
    "statecar_state_writes_total",
    "statecar_state_reads_total",
    "statecar_state_bytes_original_total",
    "statecar_state_bytes_stored_total",
    "statecar_state_bytes_read_original_total",
    "statecar_state_bytes_read_stored_total",
    "statecar_checksum_failures_total",
    "statecar_versions_written_total",
    "statecar_versions_trimmed_total",
}
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
CONFIG_PATH = "/etc/statecar/statecar.toml"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def finish(what):
    if failures:
        print(f"{what}: {len(failures)} problem(s)")
        sys.exit(1)
    print(f"{what}: ok")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def cmd_split(rendered, outdir):
    docs = load_docs(rendered)
    builtin = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in CRD_KINDS]
    crds = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS]
    other = [d for d in docs if "monitoring.coreos.com" in str(d.get("apiVersion")) and d not in crds]
    for d in other:
        fail(f"{ident(d)}: a monitoring.coreos.com kind this check does not know how to validate")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "builtin.yaml"), "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    with open(os.path.join(outdir, "crd.json"), "w") as f:
        json.dump(crds, f)
    print(f"{len(builtin)} core resource(s), {len(crds)} custom resource(s): "
          + ", ".join(ident(d) for d in docs))
    if not builtin:
        fail("nothing rendered")
    finish("split")


# Fields the chart may set, by path ("*" for list items); anything else is a typo or drift.
SM_ALLOWED = {
    "apiVersion", "kind", "metadata", "metadata.name", "metadata.namespace", "metadata.labels",
    "metadata.labels.*", "metadata.annotations", "metadata.annotations.*", "spec",
    "spec.namespaceSelector", "spec.namespaceSelector.matchNames",
    "spec.namespaceSelector.matchNames.*", "spec.selector",
    "spec.selector.matchLabels", "spec.selector.matchLabels.*", "spec.endpoints",
    "spec.endpoints.*", "spec.endpoints.*.port", "spec.endpoints.*.path",
    "spec.endpoints.*.scheme", "spec.endpoints.*.interval", "spec.endpoints.*.scrapeTimeout",
    "spec.endpoints.*.honorLabels", "spec.endpoints.*.relabelings",
    "spec.endpoints.*.metricRelabelings",
}
PR_ALLOWED = {
    "apiVersion", "kind", "metadata", "metadata.name", "metadata.namespace", "metadata.labels",
    "metadata.labels.*", "metadata.annotations", "metadata.annotations.*", "spec",
    "spec.groups", "spec.groups.*", "spec.groups.*.name", "spec.groups.*.interval",
    "spec.groups.*.rules", "spec.groups.*.rules.*", "spec.groups.*.rules.*.alert",
    "spec.groups.*.rules.*.record", "spec.groups.*.rules.*.expr", "spec.groups.*.rules.*.for",
    "spec.groups.*.rules.*.labels", "spec.groups.*.rules.*.labels.*",
    "spec.groups.*.rules.*.annotations", "spec.groups.*.rules.*.annotations.*",
}
# User-supplied relabeling lists are passed through; the CRD model validates their types.
OPAQUE = {"spec.endpoints.*.relabelings", "spec.endpoints.*.metricRelabelings"}


def walk_paths(node, prefix, out):
    if prefix in OPAQUE:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            if prefix.endswith("labels") or prefix.endswith("annotations") or prefix.endswith("matchLabels"):
                p = f"{prefix}.*"
            out.add(p)
            walk_paths(v, p, out)
    elif isinstance(node, list):
        p = f"{prefix}.*"
        for v in node:
            out.add(p)
            walk_paths(v, p, out)


def cmd_crd_strict(crd_json):
    with open(crd_json) as f:
        docs = json.load(f)
    for d in docs:
        allowed = SM_ALLOWED if d["kind"] == "ServiceMonitor" else PR_ALLOWED
        paths = set()
        walk_paths(d, "", paths)
        for p in sorted(paths - allowed):
            fail(f"{ident(d)}: unexpected field {p}")
        if d["kind"] == "PrometheusRule":
            for g in d["spec"]["groups"]:
                for r in g["rules"]:
                    for m in re.findall(r"statecar_[a-z_]+", r["expr"]):
                        base = re.sub(r"_(bucket|sum|count)$", "", m)
                        if base not in KNOWN_METRICS:
                            fail(f"{ident(d)}: alert {r.get('alert')} uses unknown metric {m}")
    print(f"{len(docs)} custom resource(s) checked for unexpected fields")
    finish("crd-strict")


def env_map(container):
    return {e["name"]: e for e in container.get("env") or []}


def split_hostport(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback_or_any(host):
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return ip.is_loopback or ip.is_unspecified


def quantity_bytes(q):
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "": 1}
    q = str(q)
    n = q.rstrip("KMGTi")
    return int(n) * units[q[len(n):]]


def toml_int(toml_text, table, key):
    section = ""
    for line in toml_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == table and line.split("=")[0].strip() == key:
            return int(line.split("=", 1)[1].strip())
    return None


def toml_listen(toml_text):
    """listen and [metrics] listen from the rendered TOML (a tiny reader for this chart's output)."""
    section, top, metrics = "", None, None
    for line in toml_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
            continue
        m = re.match(r'^listen\s*=\s*"([^"]*)"', line)
        if m and section == "":
            top = m.group(1)
        elif m and section == "metrics":
            metrics = m.group(1)
    return top, metrics


def cmd_wiring(rendered, outdir, expect_mode):
    docs = load_docs(rendered)
    os.makedirs(outdir, exist_ok=True)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    if not workloads:
        fail("no workload rendered")
    pods_checked = 0
    for w in workloads:
        name = ident(w)
        tmpl = w["spec"]["template"]
        spec = tmpl["spec"]
        annotations = tmpl.get("metadata", {}).get("annotations") or {}
        inits = spec.get("initContainers") or []
        mains = spec.get("containers") or []
        native = [c for c in inits if c.get("args", [])[-1:] == [CONFIG_PATH]]
        regular = [c for c in mains if c.get("args", [])[-1:] == [CONFIG_PATH]]
        sidecars = native + regular
        if len(sidecars) != 1:
            fail(f"{name}: expected one statecar container, found {len(sidecars)}")
            continue
        sc = sidecars[0]
        mode = "native" if native else "regular"
        if expect_mode and mode != expect_mode:
            fail(f"{name}: statecar is a {mode} sidecar, expected {expect_mode}")
        if native:
            if sc.get("restartPolicy") != "Always":
                fail(f"{name}: native sidecar without restartPolicy: Always")
            if inits.index(sc) != 0 and any(c.get("restartPolicy") != "Always" for c in inits[: inits.index(sc)]):
                print(f"  note {name}: init containers before statecar run without it")
        elif "restartPolicy" in sc:
            fail(f"{name}: regular sidecar must not set restartPolicy")

        env = env_map(sc)
        listen = env.get("STATECAR_LISTEN", {}).get("value")
        metrics_listen = env.get("STATECAR_METRICS_LISTEN", {}).get("value")
        # The config file the container reads.
        mounts = {m["mountPath"]: m["name"] for m in sc.get("volumeMounts") or []}
        vol_name = mounts.get(os.path.dirname(CONFIG_PATH))
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        cm_name = (volumes.get(vol_name) or {}).get("configMap", {}).get("name")
        cm = configmaps.get(cm_name)
        if not cm or "statecar.toml" not in cm.get("data", {}):
            fail(f"{name}: {CONFIG_PATH} is not mounted from a rendered ConfigMap with statecar.toml")
            continue
        toml_text = cm["data"]["statecar.toml"]
        file_listen, file_metrics = toml_listen(toml_text)
        # The clients' memory budget is derived from the container's memory limit.
        mem_limit = ((sc.get("resources") or {}).get("limits") or {}).get("memory")
        budget = toml_int(toml_text, "limits", "max_client_memory")
        if mem_limit and budget is None:
            fail(f"{name}: memory limit {mem_limit} but no limits.max_client_memory in statecar.toml")
        elif mem_limit and budget is not None and budget > quantity_bytes(mem_limit):
            fail(f"{name}: limits.max_client_memory {budget} exceeds the memory limit {mem_limit}")
        if listen is None:
            listen = file_listen or "127.0.0.1:6380"
        elif file_listen and file_listen != listen:
            fail(f"{name}: STATECAR_LISTEN {listen} differs from the ConfigMap's listen {file_listen}")
        if metrics_listen is None:
            metrics_listen = file_metrics
        elif file_metrics and file_metrics != metrics_listen:
            fail(f"{name}: STATECAR_METRICS_LISTEN {metrics_listen} differs from the ConfigMap's {file_metrics}")
        if not metrics_listen:
            fail(f"{name}: no metrics listener, so no probes and no scraping")
            continue
        l_host, l_port = split_hostport(listen)
        m_host, m_port = split_hostport(metrics_listen)

        # The app talks to statecar where statecar listens.
        apps = [c for c in mains if c is not sc]
        urls = []
        for c in apps:
            for e in c.get("env") or []:
                v = e.get("value") or ""
                if v.startswith(("redis://", "rediss://")):
                    urls.append((c["name"], e["name"], v))
        if not urls:
            fail(f"{name}: no app container has a redis:// URL in its env")
        for cname, ename, url in urls:
            u = urlsplit(url)
            if u.scheme != "redis":
                fail(f"{name}: {cname} {ename}={url}: statecar speaks plain redis:// on localhost")
            if u.port != l_port:
                fail(f"{name}: {cname} {ename}={url} but statecar listens on {listen}")
            if not is_loopback_or_any(u.hostname or ""):
                fail(f"{name}: {cname} {ename}={url} does not point at the pod's loopback")
            if not is_loopback_or_any(l_host):
                fail(f"{name}: statecar listens on {listen}, not reachable as {url}")
            elif l_host not in ("0.0.0.0", "::") and (u.hostname or "") not in (l_host, "localhost"):
                fail(f"{name}: {cname} {ename}={url} but statecar binds only {l_host}")
            print(f"  {name}: {cname} {ename}={url} -> statecar ({mode}) listening on {listen}")
        for c in apps:
            for p in c.get("ports") or []:
                if p.get("containerPort") in (l_port, m_port):
                    fail(f"{name}: app container {c['name']} uses port {p['containerPort']} as statecar does")

        # Probes, scraping and security.
        if m_host not in ("0.0.0.0", "::", ""):
            fail(f"{name}: metrics listen {metrics_listen} is not reachable by kubelet probes")
        probes = {k: sc.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", ("/readyz", "/healthz"))):
            p = probes.get(kind)
            if not p:
                fail(f"{name}: statecar has no {kind}")
                continue
            hg = p.get("httpGet") or {}
            if hg.get("port") != m_port:
                fail(f"{name}: {kind} port {hg.get('port')} is not the metrics port {m_port}")
            if hg.get("path") not in (path if isinstance(path, tuple) else (path,)):
                fail(f"{name}: {kind} path {hg.get('path')}, expected {path}")
        if annotations.get("prometheus.io/scrape") == "true":
            if annotations.get("prometheus.io/port") != str(m_port):
                fail(f"{name}: prometheus.io/port {annotations.get('prometheus.io/port')} is not {m_port}")
            if annotations.get("prometheus.io/path") != "/metrics":
                fail(f"{name}: prometheus.io/path is not /metrics")
        cs = annotations.get("checksum/statecar-config")
        if cs is not None:
            body = toml_text[:-1] if toml_text.endswith("\n") else toml_text
            if cs != hashlib.sha256(body.encode()).hexdigest():
                fail(f"{name}: checksum/statecar-config does not match the ConfigMap's statecar.toml")
        sec = sc.get("securityContext") or {}
        for k, want in (("readOnlyRootFilesystem", True), ("runAsNonRoot", True), ("allowPrivilegeEscalation", False)):
            if sec.get(k) is not want:
                fail(f"{name}: statecar securityContext.{k} is not {want}")
        if "ALL" not in ((sec.get("capabilities") or {}).get("drop") or []):
            fail(f"{name}: statecar does not drop ALL capabilities")
        if not (sc.get("resources") or {}).get("requests"):
            fail(f"{name}: statecar has no resource requests")
        # Secret references resolve to a rendered Secret or a declared existing one.
        for e in sc.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] in secrets:
                data = secrets[ref["name"]].get("data") or secrets[ref["name"]].get("stringData") or {}
                if ref["key"] not in data:
                    fail(f"{name}: {e['name']} refers to key {ref['key']} missing from Secret {ref['name']}")
            elif ref:
                print(f"  {name}: {e['name']} from existing Secret {ref['name']} key {ref['key']}")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        drain = re.search(r"^drain_timeout_s\s*=\s*(\d+)", toml_text, re.M)
        if drain and int(drain.group(1)) >= grace:
            fail(f"{name}: drain_timeout_s {drain.group(1)} is not below terminationGracePeriodSeconds {grace}")

        # Metrics Service and ServiceMonitor reach this pod's metrics port.
        pod_labels = tmpl.get("metadata", {}).get("labels") or {}
        msvcs = [s for s in by_kind.get("Service", [])
                 if s["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "metrics"]
        for s in msvcs:
            sel = s["spec"].get("selector") or {}
            if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
                fail(f"{name}: metrics Service {s['metadata']['name']} selector {sel} misses the pod labels {pod_labels}")
            ports = [p for p in s["spec"]["ports"] if p.get("name") == "sc-metrics"]
            if not ports or ports[0].get("targetPort") != m_port:
                fail(f"{name}: metrics Service {s['metadata']['name']} does not target port {m_port}")
        for sm in by_kind.get("ServiceMonitor", []):
            sel = sm["spec"]["selector"]["matchLabels"]
            hits = [s for s in msvcs if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            if len(hits) != 1:
                fail(f"ServiceMonitor {sm['metadata']['name']} selects {len(hits)} metrics Services")
            ports = {p.get("name") for s in hits for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in ports:
                    fail(f"ServiceMonitor {sm['metadata']['name']} endpoint port {ep.get('port')} not in {ports}")
        if by_kind.get("ServiceMonitor") and not msvcs:
            fail("a ServiceMonitor without a metrics Service")

        # What `statecar check-config` gets: the file plus the sidecar's plain env.
        base = os.path.join(outdir, f"{w['kind']}-{w['metadata']['name']}")
        with open(base + ".toml", "w") as f:
            f.write(toml_text)
        with open(base + ".env", "w") as f:
            for e in sc.get("env") or []:
                if "value" in e and e["name"].startswith("STATECAR_"):
                    f.write(f"{e['name']}={e['value']}\n")
        pods_checked += 1
    print(f"{pods_checked} pod template(s) wired correctly")
    finish("wiring")


def cmd_dashboard(path, rendered):
    with open(path) as f:
        text = f.read()
    try:
        dash = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{path}: not JSON: {e}")
        finish("dashboard")
    ids, exprs = [], []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    for p in panels(dash.get("panels", [])):
        ids.append(p.get("id"))
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            fail(f"panel {p.get('title')}: datasource is not the $datasource variable")
        for t in p.get("targets") or []:
            exprs.append((p.get("title"), t.get("expr", "")))
    if len(ids) != len(set(ids)):
        fail("duplicate panel ids")
    if not dash.get("uid") or not dash.get("title"):
        fail("dashboard needs a uid and a title")
    used = set()
    for title, e in exprs:
        if not e:
            fail(f"panel {title}: empty query")
        for m in re.findall(r"statecar_[a-z_]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            used.add(base)
            if base not in KNOWN_METRICS:
                fail(f"panel {title}: unknown metric {m}")
    wanted = {"statecar_commands_total", "statecar_command_duration_seconds",
              "statecar_upstream_shared_connections", "statecar_upstream_leased_in_use",
              "statecar_state_bytes_original_total", "statecar_state_bytes_stored_total",
              "statecar_checksum_failures_total", "statecar_versions_written_total",
              "statecar_versions_trimmed_total", "statecar_client_connections"}
    for m in sorted(wanted - used):
        fail(f"dashboard shows nothing of {m}")
    for r in rendered:
        for d in load_docs(r):
            if d["kind"] == "ConfigMap" and "statecar.json" in (d.get("data") or {}):
                if d["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
                    print(f"  note {r}: dashboard ConfigMap without grafana_dashboard: \"1\"")
                if json.loads(d["data"]["statecar.json"]) != dash:
                    fail(f"{r}: the dashboard ConfigMap differs from {path}")
                else:
                    print(f"  {r}: dashboard ConfigMap {d['metadata']['name']} carries {path}")
    print(f"{len(exprs)} queries in {len(ids)} panels, {len(used)} metrics")
    if os.environ.get("DASHBOARD_RULES_OUT"):
        # Each query as a recording rule, with Grafana's variables filled in, so that
        # `promtool check rules` parses every PromQL expression offline.
        subst = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s",
                 "$namespace": ".*", "$pod": ".*"}
        rules = []
        for i, (title, e) in enumerate(exprs):
            for k, v in subst.items():
                e = e.replace(k, v)
            if "$" in e:
                fail(f"panel {title}: unknown variable in {e}")
            rules.append({"record": f"statecar_dashboard:query_{i}", "expr": e})
        with open(os.environ["DASHBOARD_RULES_OUT"], "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    finish("dashboard")


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd = argv[1]
    if cmd == "split":
        cmd_split(argv[2], argv[3])
    elif cmd == "crd-strict":
        cmd_crd_strict(argv[2])
    elif cmd == "wiring":
        mode = None
        if "--expect-mode" in argv:
            mode = argv[argv.index("--expect-mode") + 1]
        cmd_wiring(argv[2], argv[3], mode)
    elif cmd == "dashboard":
        cmd_dashboard(argv[2], argv[3:])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
