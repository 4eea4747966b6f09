#!/bin/sh
# Test stand-in (add-node / remove-node tests only): `microk8s` whose `kubectl` and kubelet
# registration reach the Kubernetes API emulator the test started, so the provision
# phases' node labels and the join are seen by the miner API. Everything else goes to the
# provision stand-in (tests/support/standins.sh), which keeps the microk8s state.
api=$(cat /var/lib/nodes-test/api-server)
base=/usr/local/lib/nodes-test/microk8s
case "$1" in
kubectl)
  verb=$2; n=$4
  case "$verb" in
  get)
    obj=$(curl -sf "$api/api/v1/nodes/$n") || { echo "Error from server (NotFound): nodes \"$n\" not found" >&2; exit 1; }
    case "$*" in
      *Ready*) echo "$obj" | jq -r '.status.conditions[] | select(.type == "Ready") | .status' ;;
      *internal-ip*) echo "$obj" | jq -r '.metadata.annotations["kubeadm.alpha.kubernetes.io/internal-ip"] // empty' ;;
      *external-ip*) echo "$obj" | jq -r '.metadata.labels["chutes/external-ip"] // empty' ;;
    esac ;;
  label|annotate)
    kv=$5; k=${kv%%=*}; v=${kv#*=}
    field=labels; [ "$verb" = annotate ] && field=annotations
    curl -sf -X PATCH -H 'Content-Type: application/merge-patch+json' "$api/api/v1/nodes/$n" \
      -d "{\"metadata\":{\"$field\":{\"$k\":\"$v\"}}}" >/dev/null ;;
  *) echo "kubectl stand-in: unsupported: $*" >&2; exit 1 ;;
  esac ;;
join)
  "$base" "$@" || exit $?
  # The kubelet registers its Node once joined.
  curl -sf -X POST -H 'Content-Type: application/json' "$api/api/v1/nodes" --data @/var/lib/nodes-test/node.json >/dev/null ;;
leave)
  echo "microk8s leave" >> /var/log/standin.calls
  rm -f /var/lib/standin/joined ;;
*) exec "$base" "$@" ;;
esac
