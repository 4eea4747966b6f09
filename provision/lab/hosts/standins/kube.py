"""Lab stand-in model of the Kubernetes API that `microk8s kubectl` reaches (TEST SUPPORT ONLY).

Called by the microk8s stand-in (standins/microk8s) as
    python3 kube.py kubectl ARGS...     `microk8s kubectl ARGS...`
    python3 kube.py addon NAME ARGS...  the cluster side of `microk8s enable NAME ARGS...`
    python3 kube.py joined              the kubelet of a node that just joined registers its Node

Where the objects live:
- With an API emulator (`$LAB_STATE/microk8s/api-server` holds its http:// URL, the same file
  `microk8s config` prints as server), Nodes are read and written there, so that the miner API
  and the tests see the labels a provisioning run sets, and a joining node registers there.
- Without one, Nodes are JSON files in `$LAB_STATE/kube/nodes/NAME.json` on this host (a test
  registers the nodes that will join with `LabHost::set_kube_node`); the host's own node exists
  while microk8s runs. Reads never write (a `--check` run must leave no trace).
- `enable hostpath-storage` makes the addon's default StorageClass `microk8s-hostpath`: in the
  API emulator when there is one (so `minerctl deploy`'s claims find it), else in
  `$LAB_STATE/kube/storageclasses/`.
- RuntimeClasses are always local (`$LAB_STATE/kube/runtimeclasses/NAME.json`): the emulator
  does not model node.k8s.io.

The GPU operator (`microk8s enable nvidia`) is modelled as the controller it is: while the addon
is enabled on this host, every node that carries the annotation `lab-standins/gpus` ("COUNT
MEMORY_MIB", from its nvidia-smi stand-in) reports `nvidia.com/gpu` capacity and the labels
nvidia.com/gpu.present/count/memory, and the RuntimeClass named by
`--gpu-operator-set operator.runtimeClass=NAME` (default `nvidia`) exists.

kubectl: `get node[s] [NAME] [-o json|name|jsonpath=TEMPLATE]`, `get runtimeclass[es] [NAME]`,
`get pods -n gpu-operator-resources` (the operator's pods, Running while the addon is enabled),
`label node NAME k=v... [--overwrite]` (`k-` removes), `annotate node NAME k=v... [--overwrite]`,
with kubectl's wording for NotFound and for a label that exists without --overwrite. Other
kubectl commands succeed and print nothing (recorded by the microk8s stand-in).
"""

import json
import os
import re
import sys
import urllib.error
import urllib.request

STATE = "/var/lib/lab-standins"
M = STATE + "/microk8s"
KUBE = STATE + "/kube"
GPU_ANNOTATION = "lab-standins/gpus"


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def host_env():
    env = {}
    for line in (read(STATE + "/host.env", "") or "").splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    return env


def die(code, msg):
    sys.stderr.write(msg + "\n")
    sys.exit(code)


def addons():
    return (read(M + "/addons", "") or "").split()


def addon_args(name):
    return (read(M + "/addon-args/" + name, "") or "").split("\n")


def emulator():
    url = (read(M + "/api-server", "") or "").strip()
    return url.rstrip("/") if url.startswith("http://") else None


def node_object(name, gpus=None, ready="True"):
    annotations = {}
    if gpus:
        annotations[GPU_ANNOTATION] = "%d %d" % gpus
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}, "annotations": annotations},
        "spec": {},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady"}],
        },
    }


def own_gpus():
    """(count, memory MiB of the first) from this host's nvidia-smi stand-in, or None."""
    rows = [l.split("\t") for l in (read(STATE + "/nvidia/gpus", "") or "").splitlines() if l]
    if not rows:
        return None
    return (len(rows), int(rows[0][3]))


class Local:
    def path(self, name):
        return KUBE + "/nodes/" + name + ".json"

    def names(self):
        try:
            names = sorted(f[:-5] for f in os.listdir(KUBE + "/nodes") if f.endswith(".json"))
        except OSError:
            names = []
        own = host_env().get("LAB_NAME")
        if own and own not in names and os.path.exists(M + "/running") and not os.path.exists(M + "/joined"):
            names.append(own)
        return sorted(names)

    def get(self, name):
        text = read(self.path(name))
        if text is not None:
            return json.loads(text)
        if name in self.names():
            return node_object(name, own_gpus())
        return None

    def list(self):
        return [n for n in (self.get(x) for x in self.names()) if n]

    def put(self, node, status=False):
        write(self.path(node["metadata"]["name"]), json.dumps(node, indent=1) + "\n")

    def create(self, node):
        self.put(node)


class Emulator:
    def __init__(self, url):
        self.url = url

    def call(self, method, path, body=None, ctype="application/json"):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code == 409 and method == "POST":
                return None
            die(1, "Error from server: %s %s: %s" % (method, path, e.read().decode(errors="replace")))
        except OSError as e:
            die(1, "The connection to the server %s was refused - did you specify the right host or port? (%s)"
                % (self.url, e))

    def get(self, name):
        return self.call("GET", "/api/v1/nodes/" + name)

    def list(self):
        return (self.call("GET", "/api/v1/nodes") or {}).get("items", [])

    def put(self, node, status=False):
        meta = node["metadata"]
        patch = {"metadata": {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}}}
        old = self.get(meta["name"]) or {"metadata": {}}
        for field in ("labels", "annotations"):
            for k in (old["metadata"].get(field) or {}):
                if k not in patch["metadata"][field]:
                    patch["metadata"][field][k] = None
        self.call("PATCH", "/api/v1/nodes/" + meta["name"], patch, "application/merge-patch+json")
        if status:
            st = {"status": {k: node["status"][k] for k in ("capacity", "allocatable") if k in node["status"]}}
            self.call("PATCH", "/api/v1/nodes/" + meta["name"] + "/status", st, "application/merge-patch+json")

    def create(self, node):
        self.call("POST", "/api/v1/nodes", node)


def store():
    url = emulator()
    return Emulator(url) if url else Local()


def gpu_operator(node):
    """The node as the GPU operator leaves it: labels and capacity from the GPU annotation."""
    if "nvidia" not in addons():
        return node, False
    gpus = ((node.get("metadata", {}).get("annotations") or {}).get(GPU_ANNOTATION) or "").split()
    if len(gpus) != 2:
        return node, False
    count, memory = gpus
    want = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": count, "nvidia.com/gpu.memory": memory}
    labels = node["metadata"].setdefault("labels", {}) or {}
    node["metadata"]["labels"] = labels
    status = node.setdefault("status", {})
    changed = False
    for k, v in want.items():
        if labels.get(k) != v:
            labels[k] = v
            changed = True
    for field in ("capacity", "allocatable"):
        res = status.setdefault(field, {})
        if res.get("nvidia.com/gpu") != count:
            res["nvidia.com/gpu"] = count
            changed = True
    return node, changed


def nodes_view(s, name=None):
    """Nodes as the API would serve them now (the operator reconciled in the emulator)."""
    items = [s.get(name)] if name else s.list()
    out = []
    for n in items:
        if n is None:
            out.append(None)
            continue
        n, changed = gpu_operator(n)
        if changed and isinstance(s, Emulator):
            s.put(n, status=True)
        out.append(n)
    return out


OPERATOR_NAMESPACE = "gpu-operator-resources"


def operator_pods():
    """The GPU operator's pods: Running while the nvidia addon is enabled (no other pods are
    modelled)."""
    if "nvidia" not in addons():
        return []
    names = ["gpu-operator-lab", "nvidia-device-plugin-daemonset-lab", "gpu-feature-discovery-lab",
             "nvidia-container-toolkit-daemonset-lab", "nvidia-operator-validator-lab"]
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": OPERATOR_NAMESPACE},
             "status": {"phase": "Running"}} for n in names]


def runtime_classes():
    try:
        names = sorted(f[:-5] for f in os.listdir(KUBE + "/runtimeclasses") if f.endswith(".json"))
    except OSError:
        names = []
    return [json.loads(read(KUBE + "/runtimeclasses/" + n + ".json")) for n in names]


# --- jsonpath templates, as kubectl's -o jsonpath= prints them (missing keys print nothing) ---

def tokens(template):
    out, i = [], 0
    while i < len(template):
        if template[i] == "{":
            depth, j = 0, i
            while j < len(template):
                if template[j] == "{":
                    depth += 1
                elif template[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                elif template[j] == '"':
                    j += 1
                    while j < len(template) and template[j] != '"':
                        j += 2 if template[j] == "\\" else 1
                j += 1
            out.append(("expr", template[i + 1:j].strip()))
            i = j + 1
        else:
            j = template.find("{", i)
            j = len(template) if j < 0 else j
            out.append(("text", template[i:j]))
            i = j
    return out


def split_path(path):
    parts, cur, i = [], "", 0
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            cur += path[i + 1]
            i += 2
            continue
        if c == "." and not cur.count("[") > cur.count("]"):
            if cur:
                parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur:
        parts.append(cur)
    return parts


def walk(values, path):
    path = path[1:] if path.startswith("@") else path
    for part in split_path(path):
        m = re.match(r"^([^\[]*)((?:\[.*?\])*)$", part)
        key, subs = m.group(1), re.findall(r"\[(.*?)\](?=\[|$)", m.group(2))
        nxt = []
        for v in values:
            if key:
                if isinstance(v, dict) and key in v:
                    nxt.append(v[key])
            else:
                nxt.append(v)
        for sub in subs:
            res = []
            for v in nxt:
                if not isinstance(v, list):
                    continue
                if sub == "*":
                    res.extend(v)
                elif re.match(r"^-?\d+$", sub):
                    k = int(sub)
                    if -len(v) <= k < len(v):
                        res.append(v[k])
                else:
                    f = re.match(r'^\?\(@\.([\w.\-/]+)\s*==\s*["\']([^"\']*)["\']\)$', sub)
                    if not f:
                        die(1, "error: error parsing jsonpath: unsupported filter [%s] (lab stand-in)" % sub)
                    res.extend(x for x in v if isinstance(x, dict) and walk([x], "." + f.group(1)) == [f.group(2)])
            nxt = res
        values = nxt
    return values


def show(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render(template, root):
    toks = tokens(template)
    out = []

    def run(toks, cur):
        i = 0
        while i < len(toks):
            kind, val = toks[i]
            if kind == "text":
                out.append(val)
            elif val.startswith("range "):
                depth, j = 1, i + 1
                while j < len(toks):
                    if toks[j][0] == "expr" and toks[j][1].startswith("range "):
                        depth += 1
                    elif toks[j] == ("expr", "end"):
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                for item in walk([cur], val[6:].strip()):
                    run(toks[i + 1:j], item)
                i = j
            elif val.startswith('"'):
                out.append(json.loads(val))
            else:
                out.append(" ".join(show(x) for x in walk([cur], val)))
            i += 1

    run(toks, root)
    return "".join(out)


def print_objects(objs, single, output, kind):
    if single:
        root = objs[0]
    else:
        root = {"apiVersion": "v1", "kind": "List", "items": objs}
    if output is None:
        for o in objs:
            print(o["metadata"]["name"])
    elif output == "json":
        print(json.dumps(root, indent=4))
    elif output == "name":
        for o in objs:
            print(kind + "/" + o["metadata"]["name"])
    elif output.startswith("jsonpath="):
        t = output[len("jsonpath="):]
        if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
            t = t[1:-1]
        sys.stdout.write(render(t, root))
    else:
        die(1, "error: unable to match a printer suitable for the output format \"%s\" (lab stand-in)" % output)


def kubectl(args):
    output, words, overwrite, namespace = None, [], False, "default"
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-o", "--output"):
            output = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        elif a.startswith("-o") and len(a) > 2:
            output = a[2:]
        elif a.startswith("--output="):
            output = a[len("--output="):]
        elif a == "--overwrite":
            overwrite = True
        elif a in ("-n", "--namespace"):
            namespace = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        elif a.startswith("--namespace="):
            namespace = a.split("=", 1)[1]
        elif a.startswith("-"):
            pass
        else:
            words.append(a)
        i += 1
    if not words:
        return
    verb, rest = words[0], words[1:]
    kind = rest[0] if rest else ""
    names = rest[1:]
    s = store()
    if verb == "get" and kind in ("node", "nodes", "no"):
        if names:
            objs = nodes_view(s, names[0])
            if objs[0] is None:
                die(1, 'Error from server (NotFound): nodes "%s" not found' % names[0])
            print_objects(objs, True, output, "node")
        else:
            print_objects(nodes_view(s), False, output, "node")
    elif verb == "get" and kind in ("pod", "pods", "po"):
        pods = operator_pods() if namespace == OPERATOR_NAMESPACE else []
        if names:
            pods = [p for p in pods if p["metadata"]["name"] == names[0]]
            if not pods:
                die(1, 'Error from server (NotFound): pods "%s" not found' % names[0])
        print_objects(pods, bool(names), output, "pod")
    elif verb == "get" and kind in ("runtimeclass", "runtimeclasses"):
        rcs = runtime_classes()
        if names:
            rcs = [r for r in rcs if r["metadata"]["name"] == names[0]]
            if not rcs:
                die(1, 'Error from server (NotFound): runtimeclasses.node.k8s.io "%s" not found' % names[0])
            print_objects(rcs, True, output, "runtimeclass.node.k8s.io")
        else:
            print_objects(rcs, False, output, "runtimeclass.node.k8s.io")
    elif verb in ("label", "annotate") and kind in ("node", "nodes", "no"):
        if not names:
            die(1, "error: resource(s) were provided, but no name was specified")
        name, pairs = names[0], names[1:]
        node = s.get(name)
        if node is None:
            die(1, 'Error from server (NotFound): nodes "%s" not found' % name)
        field = "labels" if verb == "label" else "annotations"
        meta = node["metadata"]
        values = meta.get(field) or {}
        for p in pairs:
            if p.endswith("-") and "=" not in p:
                values.pop(p[:-1], None)
                continue
            k, _, v = p.partition("=")
            if k in values and values[k] != v and not overwrite:
                die(1, "error: '%s' already has a value (%s), and --overwrite is false" % (k, values[k]))
            values[k] = v
        meta[field] = values
        s.put(node)
        print("node/%s %s" % (name, "labeled" if verb == "label" else "annotated"))
    # Anything else: recorded by the microk8s stand-in, nothing modelled.


HOSTPATH_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "microk8s-hostpath",
                 "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "microk8s.io/hostpath",
    "reclaimPolicy": "Delete",
    "volumeBindingMode": "WaitForFirstConsumer",
}


def addon(args):
    name, flags = args[0], args[1:]
    if name == "hostpath-storage":
        # The addon's default StorageClass, where the cluster's objects live.
        url = emulator()
        if url:
            Emulator(url).call("POST", "/apis/storage.k8s.io/v1/storageclasses", HOSTPATH_CLASS)
        else:
            write(KUBE + "/storageclasses/microk8s-hostpath.json", json.dumps(HOSTPATH_CLASS) + "\n")
        return
    if name != "nvidia":
        return
    rc = "nvidia"
    for i, a in enumerate(flags):
        v = None
        if a == "--gpu-operator-set" and i + 1 < len(flags):
            v = flags[i + 1]
        elif a.startswith("--gpu-operator-set="):
            v = a.split("=", 1)[1]
        if v and v.startswith("operator.runtimeClass="):
            rc = v.split("=", 1)[1]
    obj = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": rc}, "handler": "nvidia"}
    write(KUBE + "/runtimeclasses/" + rc + ".json", json.dumps(obj) + "\n")
    nodes_view(store())


def joined():
    url = emulator()
    if not url:
        return
    text = read(M + "/node.json")
    node = json.loads(text) if text else node_object(host_env().get("LAB_NAME", "node"), own_gpus())
    Emulator(url).create(node)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "kubectl":
        kubectl(args)
    elif cmd == "addon":
        addon(args)
    elif cmd == "joined":
        joined()


if __name__ == "__main__":
    main()
