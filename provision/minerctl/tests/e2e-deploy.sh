#!/usr/bin/env bash
# Runs the one test that needs a real Kubernetes cluster (ignored in the normal test run):
# `minerctl deploy` twice into a namespace of that cluster, the second time changing nothing.
#
#   MINERCTL_E2E_KUBECONFIG=~/.kube/config MINERCTL_E2E_HOTKEY=./hotkey \
#     [MINERCTL_E2E_NAMESPACE=minerctl-e2e] provision/minerctl/tests/e2e-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
missing=()
for v in MINERCTL_E2E_KUBECONFIG MINERCTL_E2E_HOTKEY; do
    [ -n "${!v:-}" ] || missing+=("$v")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "set ${missing[*]} (the cluster's kubeconfig and a test miner's hotkey file)" >&2
    exit 2
fi
for f in "$MINERCTL_E2E_KUBECONFIG" "$MINERCTL_E2E_HOTKEY"; do
    [ -r "$f" ] || { echo "cannot read $f" >&2; exit 2; }
done
exec cargo test -p minerctl --test render_deploy -- --ignored --exact deploy_to_a_real_cluster_when_one_is_given
