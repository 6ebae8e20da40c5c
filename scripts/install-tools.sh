#!/usr/bin/env bash
# Installs the deployment tooling the chart and image tests need, idempotently:
#   - helm, built from its Go module into <repo>/.stack/bin (skipped when that binary was
#     built with the pinned settings; the Go build cache makes rebuilds fast);
#   - from PyPI: kubernetes-validate (bundles the Kubernetes OpenAPI schemas, so rendered
#     manifests validate offline), promql-parser (alert and dashboard queries), dockerfile
#     (BuildKit's own Dockerfile parser) and hatchling (builds the wheel the image installs).
# Usage: scripts/install-tools.sh            (prints where helm is on its last line)
set -euo pipefail

HELM_MODULE="helm.sh/helm/v3/cmd/helm"
HELM_VERSION="v3.21.4"
# Kubernetes version helm assumes without --kube-version (lint deprecations, .Capabilities):
# stamped like helm's own release build does, from the client-go it builds with (v0.36 -> 1.36).
HELM_K8S_MAJOR="1"
HELM_K8S_MINOR="36"
# pip requirement -> module it provides (checked to skip the install when all are present).
PYTHON_TOOLS=(
    "kubernetes-validate>=1.31,<2=kubernetes_validate"
    "promql-parser>=0.5,<1=promql_parser"
    "dockerfile>=3.3,<4=dockerfile"
    "hatchling>=1.21=hatchling"
)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="${repo_root}/.stack/bin"
helm_bin="${bin_dir}/helm"
# Records how the binary was built; a change of any pinned value above triggers a rebuild.
helm_stamp="${bin_dir}/helm.build"
helm_build_id="${HELM_MODULE}@${HELM_VERSION} k8s=${HELM_K8S_MAJOR}.${HELM_K8S_MINOR}"

log() { printf 'install-tools: %s\n' "$*" >&2; }

install_helm() {
    if [[ -x "${helm_bin}" && "$(cat "${helm_stamp}" 2>/dev/null)" == "${helm_build_id}" ]] \
        && "${helm_bin}" version --template '{{.Version}}' 2>/dev/null | grep -qx "${HELM_VERSION}"; then
        log "helm ${HELM_VERSION} already at ${helm_bin}"
        return
    fi
    command -v go >/dev/null || { log "go is required to build helm"; exit 1; }
    mkdir -p "${bin_dir}"
    log "building helm ${HELM_VERSION} with $(go version | cut -d' ' -f3) (first build takes minutes)"
    local started=${SECONDS}
    # GOFLAGS is set whole so an inherited one (e.g. -mod=vendor) cannot apply to helm's
    # module. Versions are stamped the way helm's Makefile does for its release binaries.
    local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
    local pkg
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ldflags+=" -X ${pkg}.k8sVersionMajor=${HELM_K8S_MAJOR} -X ${pkg}.k8sVersionMinor=${HELM_K8S_MINOR}"
    done
    rm -f "${helm_stamp}"
    GOBIN="${bin_dir}" GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0 \
        go install -ldflags "${ldflags}" "${HELM_MODULE}@${HELM_VERSION}"
    log "helm built in $((SECONDS - started)) s"
    "${helm_bin}" version --template '{{.Version}}' | grep -qx "${HELM_VERSION}" \
        || { log "built helm does not report ${HELM_VERSION}"; exit 1; }
    echo "${helm_build_id}" >"${helm_stamp}"
}

install_python_tools() {
    local entry specs=() modules=()
    for entry in "${PYTHON_TOOLS[@]}"; do
        specs+=("${entry%=*}")
        modules+=("${entry##*=}")
    done
    local imports
    imports="$(IFS=,; echo "${modules[*]}")"
    if python3 -c "import ${imports}" 2>/dev/null; then
        log "python tools already installed (${imports})"
        return
    fi
    log "installing ${specs[*]}"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        "${specs[@]}"
}

install_helm
install_python_tools
echo "${helm_bin}"
