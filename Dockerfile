# statecar container image.
#
#   docker build -t statecar:dev .
#   docker run --rm -p 6380:6380 -p 9121:9121 \
#     -e STATECAR_UPSTREAM=redis://redis.example:6379 statecar:dev
#
# Two stages: cargo builds the release binary in a Rust image, and only that binary plus the
# default configuration go into a small Debian runtime that runs as an unprivileged numeric user.
# The base images are build arguments so that a registry mirror, or a base made locally from
# Debian's packages with debootstrap, can stand in for them (docs/OPERATIONS.md, "Building the
# image"; `.ci/deploy-checks.sh --image` does exactly that).
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The release profile keeps line tables (debug = 1) for local profiling; the shipped binary drops
# them but keeps its symbols, so a panic's backtrace still names functions.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
# The crate registry and the target folder are build caches (BuildKit or buildah), so a rebuild
# after a source change recompiles only statecar itself.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin statecar \
 && install -D -m 0755 target/release/statecar /out/statecar \
 && /out/statecar --version

FROM ${RUNTIME_IMAGE}
# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 statecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin statecar
COPY --from=build /out/statecar /usr/local/bin/statecar
COPY config/statecar.toml /etc/statecar/statecar.toml
# In a container both listeners face the container's network: the client port for linked
# containers and the metrics port for Prometheus and the health check. These variables win over
# the file's `listen` and `[metrics] listen`: override them with `-e` to change the addresses.
# The Helm chart sets both explicitly from its values.
ENV STATECAR_LISTEN=0.0.0.0:6380 \
    STATECAR_METRICS_LISTEN=0.0.0.0:9121
USER 10001:10001
EXPOSE 6380 9121
# /healthz answers 200 while the process serves; bash's /dev/tcp keeps curl out of the image.
# The port follows STATECAR_METRICS_LISTEN. (Kubernetes ignores HEALTHCHECK: the chart uses
# httpGet probes on /healthz and /readyz instead.)
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/bash", "-c", "m=${STATECAR_METRICS_LISTEN:-:9121}; exec 3<>\"/dev/tcp/127.0.0.1/${m##*:}\" && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ $status == *' 200 '* ]]"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/statecar"]
CMD ["--config", "/etc/statecar/statecar.toml"]
