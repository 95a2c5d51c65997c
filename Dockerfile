# Audio gateway: WHIP/WHEP over HTTP on 8080, WebRTC media over UDP (ephemeral ports).
# Media servers in containers need host networking or published UDP ranges plus an
# advertised address: see docs/nat-and-containers.md.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /config /recordings \
    && chown gateway /recordings

USER gateway
EXPOSE 8080/tcp
VOLUME ["/config", "/recordings"]
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["gateway", "serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
