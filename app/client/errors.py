"""The client's errors: the service's problem+json as one exception, and a download that failed its checksum."""

from __future__ import annotations

import httpx

from app.api.schemas import Problem


class APIError(Exception):
    """An error answer of the service: its problem+json, with `status`, `title`, `detail` and `field` at hand."""

    def __init__(self, problem: Problem):
        super().__init__(f"{problem.status} {problem.title}: {problem.detail}")
        self.problem = problem
        self.status, self.title, self.detail, self.field = problem.status, problem.title, problem.detail, problem.field

    @classmethod
    def of(cls, response: httpx.Response) -> APIError:
        """The error a response states; a body that is not problem+json (a proxy's page) becomes its detail."""
        try:
            return cls(Problem.model_validate_json(response.content))
        except ValueError:
            return cls(Problem(type="about:blank", title=response.reason_phrase or "Error",
                               status=response.status_code, detail=response.text[:500] or response.reason_phrase))


class ChecksumMismatch(ValueError):
    """A downloaded file whose sha256 is not the one the service announced (its ETag); the file is not kept."""
