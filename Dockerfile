# purgeproxy. The runtime contract (tested without a container engine in tests/test_runtime_contract.py):
# - runs as a non-root user (uid 10001) from a working directory it cannot write;
# - configured through the environment alone: `docker run -e PURGEPROXY_UPSTREAM=http://hapi:8080/fhir purgeproxy`
#   (every key as PURGEPROXY_SECTION__KEY), or a file: -e PURGEPROXY_CONFIG=/etc/purgeproxy/config.yaml;
# - keeps its job store in /var/lib/purgeproxy, a volume the user owns.
# Base pinned to a patch release; pin its digest too where your registry policy asks for it.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY purgeproxy ./purgeproxy
RUN pip install --no-cache-dir --no-deps . \
    && groupadd --system --gid 10001 purgeproxy \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin purgeproxy \
    && install -d -o purgeproxy -g purgeproxy -m 0750 /var/lib/purgeproxy \
    && install -d -m 0755 /etc/purgeproxy

# The image's defaults, each overridable with -e (the environment wins over a mounted file).
ENV PURGEPROXY_SERVER__HOST=0.0.0.0 \
    PURGEPROXY_SERVER__PORT=8000 \
    PURGEPROXY_JOBS__STORE=/var/lib/purgeproxy/jobs.sqlite3

USER 10001:10001
VOLUME ["/var/lib/purgeproxy"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["purgeproxy", "serve"]
