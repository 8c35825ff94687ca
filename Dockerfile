# Multi-stage build: compile in the Rust image, run from a slim Debian base as a non-root
# user. The pin store lives in /data: mount a persistent volume there. The default command
# serves with /etc/tagpin/tagpin.toml (deploy/tagpin.toml: upstream http://registry:5000,
# as in deploy/compose.yaml); mount another file there or override it with TAGPIN_*.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared in Cargo.toml, so cargo wants it present even when building only the binary.
COPY benches ./benches
RUN cargo build --release --locked --bin tagpin && strip target/release/tagpin

FROM debian:bookworm-slim
# ca-certificates is left unpinned on purpose: the trust store must follow Debian's
# security updates, and a pinned version would freeze it at build time.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin tagpin \
    && mkdir -p /data && chown tagpin:tagpin /data
COPY --from=build /src/target/release/tagpin /usr/local/bin/tagpin
COPY deploy/tagpin.toml /etc/tagpin/tagpin.toml
# Numeric, so the runtime (and Kubernetes' runAsNonRoot check) need no passwd lookup.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 5050
# No healthcheck here: compose and Kubernetes declare theirs (`tagpin probe`, httpGet).
ENTRYPOINT ["/usr/local/bin/tagpin"]
CMD ["serve", "--config", "/etc/tagpin/tagpin.toml"]
