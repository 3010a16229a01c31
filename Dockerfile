# Scoreboard server image: embedded SQLite by default, PostgreSQL via
# SCOREBOARD_DATABASE_URL. Data and generated secrets live in the /data volume.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 scoreboard \
    && useradd --system --uid 10001 --gid scoreboard --home-dir /data --no-create-home scoreboard \
    && mkdir /data \
    && chown scoreboard:scoreboard /data \
    && chmod 0700 /data
COPY --from=build /install /usr/local
ENV SCOREBOARD_HOST=0.0.0.0 \
    SCOREBOARD_PORT=8080 \
    SCOREBOARD_DATA_DIR=/data \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data"]
USER 10001:10001
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('SCOREBOARD_PORT', '8080'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["scoreboard"]
CMD ["serve"]
