# casefetch: one image for the receiver, the workers, Flower and the demo platform.
# Build: docker build -t casefetch .      Run: see README, "Run with Docker".
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 casefetch \
 && useradd --system --uid 10001 --gid casefetch --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin casefetch

WORKDIR /src

# Dependencies in their own layer, rebuilt only when pyproject.toml changes: install the
# project from empty packages, then remove the project and keep what it pulled in.
COPY pyproject.toml README.md ./
RUN mkdir casefetch receiver worker \
 && touch casefetch/__init__.py receiver/__init__.py worker/__init__.py \
 && pip install . "flower>=2.0" \
 && pip uninstall --yes casefetch \
 && rm -rf casefetch receiver worker build ./*.egg-info

# The project itself, installed as the README says (pip install .); Flower for the dashboard.
COPY casefetch ./casefetch
COPY receiver ./receiver
COPY worker ./worker
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && mkdir -p /archive /app \
 && chown casefetch:casefetch /archive /app

WORKDIR /app
ENV ARCHIVE_DIR=/archive
USER casefetch
EXPOSE 8080

# The receiver's liveness (the image's default command); other roles set their own in compose.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

CMD ["casefetch", "receiver", "--host", "0.0.0.0", "--port", "8080"]
