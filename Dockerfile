# syntax=docker/dockerfile:1
# pps-sidecar's image: built with the same script as CI (.ci/build-release), run on distroless (glibc and
# libgcc, no shell, no package manager) as the non-root user 65532. Needs no writable file system.
#   docker build -t pps-sidecar:0.1.0 .        (the tag is Cargo.toml's version; the manifests name it)
#   docker build -t pps-sidecar:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg SOURCE=https://github.com/<you>/pps-sidecar .      (the OCI labels below)
# .dockerignore keeps tests, bench, k8s (but the two Component patches `inject` compiles in), examples and
# target out of the context: the build reads Cargo.toml, Cargo.lock, src, .ci and those two files.
# The Kubernetes manifests in k8s/ run it with args `run --config /etc/pps-sidecar/sidecar.toml`.
#
# Both base images are pinned by digest, so that a rebuild of the same tree gets the same bases. Refresh a
# pin on purpose (and read the new image's changes) with
#   docker buildx imagetools inspect rust:1-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot

FROM rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the build directory between builds (BuildKit). The binary
# is stripped of its symbols (a third of its size); panics still name their file and line.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    .ci/build-release /out/pps-sidecar && strip --strip-all /out/pps-sidecar

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="pps-sidecar" \
      org.opencontainers.image.description="Webhook-verification sidecar for Pitchpoint deliveries" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /out/pps-sidecar /usr/local/bin/pps-sidecar
# By number, not by name: a pod with runAsNonRoot and no runAsUser starts only if the kubelet can see the
# user is not root, and it cannot resolve a name.
USER 65532:65532
# 8080: webhook deliveries (server.listen); 9090: /healthz, /readyz, /metrics, /app-probe/ (server.admin_listen).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/pps-sidecar"]
CMD ["run", "--config", "/etc/pps-sidecar/sidecar.toml"]
