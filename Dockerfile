# One image for every stockstreamer service; docker-compose.yml picks each one's command:
#   python -m services.fetcher | services.api | services.dashboard, and dbmate for the migrations.
# Build from the repository root: docker build -t stockstreamer .

# -- build: a virtualenv with the runtime dependencies at the project's pinned versions -----------
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml requirements.lock ./
# Only [project].dependencies: the `local` (embedded PostgreSQL, honcho) and `dev` extras stay out.
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" > requirements.in \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c requirements.lock -r requirements.in

# -- runtime: the virtualenv and our source, owned by root, run by an unprivileged user -----------
FROM python:3.11.14-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin stockstreamer
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# .dockerignore leaves out services/runner (`make run` and its embedded PostgreSQL).
COPY services ./services
COPY db ./db
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
EXPOSE 8000 5006 9101
