# Audio gateway. Ports: 8080/tcp HTTP (WHIP/WHEP, API, pages); 8189/udp WebRTC media of
# every session (with N workers 8189..8189+N-1; set GATEWAY_WEBRTC__ADDITIONAL_HOSTS to the
# host's address, docs/nat-and-containers.md); 5060/udp+tcp SIP; 20000-29999/udp RTP of
# SIP calls. Mount a config with [auth] credentials at
# /config/gateway.toml: without credentials the gateway refuses to listen beyond loopback.
# GATEWAY_CLUSTER__WORKERS=0 runs one worker per CPU (the embedded nats-server comes with
# the package); GATEWAY_CLUSTER__NATS_URL='["nats://nats:4222"]' joins a cluster
# (docs/cluster.md). Opus FEC/PLC use the libopus inside PyAV's wheel: no apt package.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_HTTP__HOST=0.0.0.0 \
    GATEWAY_SIP__BIND_HOST=0.0.0.0 \
    GATEWAY_WEBRTC__UDP_PORT=8189 \
    GATEWAY_RECORDING__DIRECTORY=/recordings \
    NUMBA_CACHE_DIR=/var/cache/numba

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The compiled kernels (analysers, resampler) are built once here: a container starts in ~1 s.
RUN pip install --no-cache-dir . \
    && python -c "import gateway.processing.kernels, gateway.codecs.resample" \
    && useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /config /recordings \
    && chown 10001 /recordings \
    && chown -R 10001 /var/cache/numba

USER 10001
EXPOSE 8080/tcp 8189/udp 5060/udp 5060/tcp 20000-29999/udp
VOLUME ["/config", "/recordings"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/config/gateway.toml"]
