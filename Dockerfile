# syntax=docker/dockerfile:1
# pps-sidecar's image: built with the same script as CI (.ci/build-release), run on distroless (glibc and
# libgcc, no shell, no package manager) as the non-root user 65532. Needs no writable file system.
#   docker build -t pps-sidecar:0.1.0 .        (the tag is Cargo.toml's version; the manifests name it)
# .dockerignore keeps tests, bench, k8s, examples and target out of the context: the build reads only
# Cargo.toml, Cargo.lock, src and .ci.
# The Kubernetes manifests in k8s/ run it with args `run --config /etc/pps-sidecar/sidecar.toml`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the build directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    .ci/build-release /out/pps-sidecar

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pps-sidecar /usr/local/bin/pps-sidecar
# By number, not by name: a pod with runAsNonRoot and no runAsUser starts only if the kubelet can see the
# user is not root, and it cannot resolve a name.
USER 65532:65532
# 8080: webhook deliveries (server.listen); 9090: /healthz, /readyz, /metrics (server.admin_listen).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/pps-sidecar"]
CMD ["run", "--config", "/etc/pps-sidecar/sidecar.toml"]
