"""The Python client of a running service, typed with the API's own pydantic models; the CLI and notebooks use it."""

from app.client.client import Client as Client
from app.client.client import Downloaded as Downloaded
from app.client.errors import APIError as APIError
from app.client.errors import ChecksumMismatch as ChecksumMismatch
