# purgeproxy: mount your configuration at /etc/purgeproxy/config.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY purgeproxy ./purgeproxy
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /nonexistent purgeproxy

USER purgeproxy
EXPOSE 8000
VOLUME ["/etc/purgeproxy"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["purgeproxy", "serve", "--config", "/etc/purgeproxy/config.yaml", "--host", "0.0.0.0", "--port", "8000"]
