# syntax=docker/dockerfile:1
# Keel container image: a Rust builder stage compiles the `keel` binary in release mode, a
# slim Debian stage runs it as an unprivileged user. Migrations are embedded in the binary;
# config/ (keel.toml, workspace.json) is copied as a default and is usually mounted over.
#
# When the `v8` crate (JavaScript transformations) lands, its build script downloads a
# prebuilt V8 archive unless RUSTY_V8_ARCHIVE names a local copy; offline builds must pass
# one in (e.g. `--build-arg RUSTY_V8_ARCHIVE=/v8/librusty_v8.a` with the file in the context).

# The locked dependencies need Rust 1.89 or newer (actix-web 4.18, uuid 1.29).
ARG RUST_VERSION=1.89

# The web console (console/, Vite + Preact): built here, embedded in the binary by build.rs.
FROM node:20-bookworm-slim AS console
WORKDIR /console
COPY console/package.json console/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY console/ ./
RUN npm run build

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
COPY --from=console /console/dist /src/console/dist
# Cache mounts keep the crate registry and target/ between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin keel \
 && cp target/release/keel /usr/local/bin/keel

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin keel
WORKDIR /app
COPY --from=builder /usr/local/bin/keel /usr/local/bin/keel
COPY config/ /app/config/
USER keel
ENV KEEL_LISTEN=0.0.0.0:8080 \
    KEEL_LOG_FORMAT=json
EXPOSE 8080
# /ready: Postgres reachable, migrations applied, actors answering, not draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=6 \
    CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["keel"]
CMD ["serve"]
