# wsd container images. One file for users and for the e2e suite.
#
# Targets (docker build --target NAME):
#   prebuilt          wsd runtime image around bin/wsd, a static binary
#                     built on the host (CGO_ENABLED=0; `go tool task build`).
#   prebuilt-wschaos  the same for bin/wschaos (offline demo).
#   build             compiles wsd and wschaos in the official Go image.
#   wschaos           wschaos runtime image, compiled in `build`.
#   runtime           wsd runtime image, compiled in `build`. Default (last).
#
# Why the prebuilt stages come first: the legacy builder (Docker < 23
# without BuildKit, docker-compose 1.29) builds every stage in order up to
# --target, so `--target prebuilt` needs no base image at all. That is how
# the e2e suite builds wsd on machines that cannot pull images. BuildKit
# (Compose v2, Docker >= 23) builds only the stages a target needs, so
# `docker compose up --build` does not need bin/; the legacy builder does:
# run `go tool task build` first (README, section Docker).
#
# Every runtime image is FROM scratch (no shell, no package manager),
# runs as an unprivileged user and carries only the static binary.

FROM scratch AS prebuilt
COPY bin/wsd /wsd
USER 65534:65534
# wsd's admin listener defaults to 127.0.0.1:9090, unreachable from
# outside a container: the image listens on every interface and leaves
# access to port publishing and the network. The admin port has no
# authentication; /debug/pprof/ stays off unless WSD_ADMIN__PPROF=true.
ENV WSD_ADMIN_LISTEN=:9090
# 8080: public WebSocket listener; 9090: admin (/healthz, /readyz,
# /debug/stats, /metrics).
EXPOSE 8080 9090
# scratch has no shell or curl: the binary probes its own admin /healthz.
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 CMD ["/wsd", "healthcheck"]
ENTRYPOINT ["/wsd"]

FROM scratch AS prebuilt-wschaos
COPY bin/wschaos /wschaos
USER 65534:65534
ENTRYPOINT ["/wschaos"]

FROM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags="-s -w" -o /out/wsd ./cmd/wsd \
 && go build -trimpath -ldflags="-s -w" -o /out/wschaos ./cmd/wschaos

FROM scratch AS wschaos
COPY --from=build /out/wschaos /wschaos
USER 65534:65534
ENTRYPOINT ["/wschaos"]

FROM scratch AS runtime
COPY --from=build /out/wsd /wsd
USER 65534:65534
ENV WSD_ADMIN_LISTEN=:9090
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 CMD ["/wsd", "healthcheck"]
ENTRYPOINT ["/wsd"]
