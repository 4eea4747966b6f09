#!/bin/sh
# Test stand-ins for what cannot run on a lab host (no systemd, shared network namespace,
# no GPU, no snapd). Installed into /usr/local/sbin (ahead of /usr/sbin in root's PATH) under
# each command's name; they keep state under /var/lib/standin and record every call in
# /var/log/standin.calls. Test support only.
me=$(basename "$0")
st=/var/lib/standin
mkdir -p "$st/enabled" "$st/active" "$st/labels"
printf '%s\n' "$me $*" >> /var/log/standin.calls
case "$me" in
systemctl)
  case "$1" in
    is-enabled) if [ -e "$st/enabled/$2" ]; then echo enabled; else echo disabled; exit 1; fi ;;
    is-active) if [ -e "$st/active/$2" ]; then echo active; else echo inactive; exit 3; fi ;;
    enable) shift; [ "$1" = --now ] && { shift; touch "$st/active/$1"; }; touch "$st/enabled/$1" ;;
    disable) rm -f "$st/enabled/$2" ;;
    start|restart) touch "$st/active/$2" ;;
    stop) rm -f "$st/active/$2" ;;
    list-units) ls "$st/active" | grep "^snap\.microk8s\." ;;
    show)
      # `show -p UnitFileState -p ActiveState -- UNIT...`: one block per unit, blank line between.
      while [ $# -gt 0 ] && [ "$1" != -- ]; do shift; done; shift
      sep=
      for u in "$@"; do
        [ -z "$sep" ] || echo; sep=1
        if [ -e "$st/enabled/$u" ]; then echo UnitFileState=enabled; else echo UnitFileState=disabled; fi
        if [ -e "$st/active/$u" ]; then echo ActiveState=active; else echo ActiveState=inactive; fi
      done ;;
    *) : ;;
  esac ;;
snap)
  case "$1" in
    install)
      if [ -e "$st/block-snap" ]; then while [ -e "$st/block-snap" ]; do sleep 0.1; done; fi
      touch "$st/snap-$2"
      mkdir -p "/snap/$2/current" /var/snap/microk8s/current/args
      printf -- '--kubeconfig=${SNAP_DATA}/credentials/kubelet.config\n--cert-dir=${SNAP_DATA}/certs\n' > /var/snap/microk8s/current/args/kubelet
      printf -- '--cert-dir=${SNAP_DATA}/certs\n--service-cluster-ip-range=10.152.183.0/24\n' > /var/snap/microk8s/current/args/kube-apiserver
      getent group microk8s >/dev/null || groupadd --system microk8s ;;
    list) [ -e "$st/snap-$2" ] ;;
    get) exit 1 ;;
    *) : ;;
  esac ;;
microk8s)
  case "$1" in
    status) echo "microk8s is running"; [ -e "$st/joined" ] && echo "acting as a node in a cluster"; exit 0 ;;
    add-node)
      ip=$(sed -n 's/^--advertise-address=//p' /var/snap/microk8s/current/args/kube-apiserver)
      echo "From the node you wish to join to this cluster, run the following:"
      echo "microk8s join ${ip:-127.0.0.1}:25000/0123456789abcdef0123456789abcdef/a1b2c3d4e5f6" ;;
    join) touch "$st/joined"; echo "$2" > "$st/joined" ;;
    config) printf 'apiVersion: v1\nkind: Config\nclusters: []\n' ;;
    kubectl)
      shift
      case "$*" in
        "get nodes -o jsonpath="*)
          # Every labelled node, Ready, with its external-ip label.
          for f in "$st"/labels/*.chutes_external-ip; do
            [ -e "$f" ] || continue; n=${f##*/}; printf '%s True %s\n' "${n%.chutes_external-ip}" "$(cat "$f")"
          done ;;
        *Ready*) echo True ;;
        label*) n=$3; kv=$4; k=$(echo "${kv%%=*}" | tr / _); echo "${kv#*=}" > "$st/labels/$n.$k" ;;
        annotate*) n=$3; kv=$4; echo "${kv#*=}" > "$st/labels/$n.annotation" ;;
        *external-ip*) cat "$st/labels/$3.chutes_external-ip" 2>/dev/null ;;
        *internal-ip*) cat "$st/labels/$3.annotation" 2>/dev/null ;;
      esac ;;
    *) : ;;
  esac ;;
nvidia-smi) echo "NVIDIA H100 80GB HBM3, 81559" ;;
nvidia-ctk)
  rt=$(echo "$*" | sed -n 's/.*--runtime=\([a-z]*\).*/\1/p')
  case "$rt" in
    docker) mkdir -p /etc/docker; echo '{"runtimes":{"nvidia":{}}}' > /etc/docker/daemon.json ;;
    containerd) mkdir -p /etc/containerd; echo '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]' >> /etc/containerd/config.toml ;;
    crio) mkdir -p /etc/crio/crio.conf.d; echo '[crio.runtime.runtimes.nvidia]' > /etc/crio/crio.conf.d/99-nvidia.conf ;;
  esac ;;
iptables)
  rule=" $* "; check=$(echo "$rule" | sed "s/ -[AC] / -X /")
  case " $rule " in
    *" -C "*) grep -qxF -- "$check" "$st/iptables" 2>/dev/null ;;
    *" -A "*) echo "$check" >> "$st/iptables" ;;
  esac ;;
*) : ;;
esac
