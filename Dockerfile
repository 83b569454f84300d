# syntax=docker/dockerfile:1
# aob's one image: every service is `aob server <role>` (api, coordinator, projector,
# workers, fanout; dev for a single-process try-out), e.g.
#
#   docker build -t aob .
#   docker run --rm -e AOB_KAFKA_BOOTSTRAP=kafka:9092 \
#     -e AOB_DATABASE_URL=postgresql://aob:aob@postgres:5432/aob aob coordinator
#
# Kafka and PostgreSQL are not in it: docs/deployment.md.

FROM python:3.11-slim AS build
# Every dependency ships binary wheels for this base: no compiler needed.
RUN python -m venv /opt/aob
WORKDIR /src
COPY . .
RUN /opt/aob/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/aob/bin/aob --help > /dev/null

FROM python:3.11-slim
LABEL org.opencontainers.image.title="aob" \
      org.opencontainers.image.description="Agentic workflows on an event-sourced, Kafka-native engine" \
      org.opencontainers.image.licenses="Apache-2.0"
# One service per container, so every role listens on the same port, on every address.
ENV PATH=/opt/aob/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AOB_HOST=0.0.0.0 \
    AOB_PORT=8080 \
    AOB_DATA_DIR=/var/lib/aob \
    AOB_LOG_FORMAT=json
RUN groupadd --system --gid 10001 aob \
    && useradd --system --uid 10001 --gid aob --home-dir /var/lib/aob --create-home \
       --shell /usr/sbin/nologin aob
COPY --from=build /opt/aob /opt/aob
USER 10001:10001
WORKDIR /var/lib/aob
EXPOSE 8080
# /health answers 503 while a dependency (Kafka, PostgreSQL) or a host task is down.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('AOB_PORT', '8080'), timeout=4)"]
# `aob server` replaces itself with the server process (signals reach it directly);
# it exits non-zero when a host task dies, for the orchestrator to restart it.
ENTRYPOINT ["aob", "server"]
CMD ["api"]
