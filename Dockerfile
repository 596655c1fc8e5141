# syntax=docker/dockerfile:1
# The syncd image: a static binary on distroless, running as uid 65532.
#   docker build --build-arg VERSION=$(git describe --tags --always) \
#                --build-arg COMMIT=$(git rev-parse HEAD) -t syncd .
# The go build line below is the one deploy/image_test.go runs and compares
# with the Makefile; keep them in step.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS=linux
ARG TARGETARCH=amd64
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags "-s -w -X github.com/syncd/syncd/internal/version.Version=${VERSION} -X github.com/syncd/syncd/internal/version.Commit=${COMMIT}" -o /out/syncd ./cmd/syncd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/syncd /syncd
USER 65532:65532
# 8080: webhooks (--listen), 9090: /healthz, /readyz, /metrics, /debug/pprof/ (--admin-listen)
EXPOSE 8080 9090
ENTRYPOINT ["/syncd"]
CMD ["serve"]
