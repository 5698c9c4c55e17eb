# The chat service in a container. Provided as-is: it could not be built on the machines
# this project is developed on. Settings come from the environment (see README, "Settings").
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 PORT=8000 DATA_DIR=/data LOG_FORMAT=json

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && useradd --system --home /data --uid 10001 chat \
    && mkdir -p /data && chown chat /data
USER chat
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
# SIGTERM: running answers end with a `server_shutdown` event, then the server exits.
STOPSIGNAL SIGTERM
CMD ["python", "start_server.py"]
