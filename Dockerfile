# syntax=docker/dockerfile:1
# Shoal's image: shoal-scheduler, shoal-peer and shoalctl in one small image.
#
#   docker buildx build -t REGISTRY/shoal:TAG --push .     (docs/install.md)
#
# The scheduler runs as the image's non-root user (65532). The peer DaemonSet
# overrides that with runAsUser: 0, with no capabilities (its init container
# adds CHOWN, DAC_OVERRIDE and FOWNER): it writes root-owned host directories
# (containerd's hosts.toml files, the data dir /var/lib/shoal).

# --- build -------------------------------------------------------------------
# Debian bookworm on both sides, so the binaries find the glibc they were built
# against. The same toolchain as rust-toolchain.toml (1.95.0), so rustup finds it
# installed (rustup may still add the rustfmt and clippy components the file names).
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep crates.io downloads and compiled dependencies across builds;
# the binaries are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p shoal-scheduler -p shoal-peer \
 && mkdir -p /out \
 && cp target/release/shoal-scheduler target/release/shoalctl target/release/shoal-peer /out/

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: upstream registries' public CAs for the peer's upstream
# client. Nothing else: no shell tools are needed beyond coreutils' `sleep`,
# which the chart's uninstall hook uses.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates=20230311* \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# glibc's malloc keeps up to 8 arenas per core, and the piece buffers (4-16 MiB)
# freed in one arena are not reused by another: measured with 8 concurrent 1 GiB
# downloads, the peer's peak RSS is 283 MiB by default and 143 MiB with 2 arenas, at
# the same throughput (docs/benchmarks.md, "Peer memory").
ENV MALLOC_ARENA_MAX=2
USER 65532:65532
EXPOSE 7600 7680 7651/udp 7652
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="Peer-to-peer container image distribution for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT []
CMD ["shoal-scheduler"]
