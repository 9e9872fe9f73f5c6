"""A local HTTP server that answers like GitHub's REST API for pull requests, so heald's real
githubkit client can be tested without github.com.

It checks each request the way the real endpoints do (docs.github.com/rest/pulls/pulls, GitHub's
OpenAPI description): the token, the JSON body's permitted keys, required keys and types, that
the head branch exists in the repository (a real bare git repository), one open pull request per
head. Pull requests it returns are GitHub's own example object (octokit/webhooks fixture
``pull_request/opened``) with this request's fields filled in.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.conftest import CORPUS

# POST /repos/{owner}/{repo}/pulls — "Create a pull request": body parameters and their types.
CREATE_FIELDS = {"title": str, "head": str, "head_repo": str, "base": str, "body": str,
                 "maintainer_can_modify": bool, "draft": bool, "issue": int}
CREATE_REQUIRED = ("head", "base")
# PATCH /repos/{owner}/{repo}/pulls/{pull_number} — "Update a pull request".
UPDATE_FIELDS = {"title": str, "body": str, "state": str, "base": str, "maintainer_can_modify": bool}


class FakeGitHub:
    """The server: ``url`` is its API base; ``repos`` maps ``owner/name`` to a bare repository
    path; ``pulls`` holds the pull requests created; ``requests`` every request received."""

    def __init__(self, token: str, repos: dict[str, Path]):
        self.token = token
        self.repos = repos
        self.pulls: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.template = json.loads((CORPUS / "github/pull_request/opened.payload.json").read_text())["pull_request"]
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, data: Any) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=utf-8")
                self.send_header("content-length", str(len(raw)))
                self.send_header("x-github-api-version-selected", "2022-11-28")
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = {"method": method, "path": self.path, "headers": dict(self.headers), "body": raw.decode()}
                outer.requests.append(record)
                status, data = outer.answer(method, self.path, self.headers, raw)
                self._send(status, data)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PATCH(self) -> None:  # noqa: N802
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ------------------------------------------------------------------------------
    def answer(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        auth = headers.get("authorization", "")
        if auth not in (f"Bearer {self.token}", f"token {self.token}"):
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        url = urlparse(path)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls(?:/(\d+))?", url.path)
        if not m or f"{m.group(1)}/{m.group(2)}" not in self.repos:
            return 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
        repo = f"{m.group(1)}/{m.group(2)}"
        if method == "GET" and m.group(3) is None:
            q = parse_qs(url.query)
            found = [p for p in self.pulls if p["_repo"] == repo]
            if "head" in q:
                found = [p for p in found if f"{m.group(1)}:{p['head']['ref']}" == q["head"][0]]
            if "state" in q and q["state"][0] != "all":
                found = [p for p in found if p["state"] == q["state"][0]]
            return 200, [self._public(p) for p in found]
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            return 400, {"message": "Problems parsing JSON"}
        if not isinstance(body, dict):
            return 400, {"message": "Problems parsing JSON"}
        if method == "POST" and m.group(3) is None:
            return self._create(repo, body)
        if method == "PATCH" and m.group(3) is not None:
            return self._update(repo, int(m.group(3)), body)
        return 404, {"message": "Not Found"}

    def _invalid(self, body: dict[str, Any], fields: dict[str, type], required: tuple[str, ...]) -> str | None:
        for key in body:
            if key not in fields:
                return f'"{key}" is not a permitted key.'
        for key in required:
            if key not in body:
                return f'"{key}" wasn\'t supplied.'
        for key, value in body.items():
            if value is not None and not (isinstance(value, fields[key]) and not (fields[key] is int and isinstance(value, bool))):
                return f'For \'properties/{key}\', {json.dumps(value)} is not a {fields[key].__name__}.'
        return None

    def _create(self, repo: str, body: dict[str, Any]) -> tuple[int, Any]:
        problem = self._invalid(body, CREATE_FIELDS, CREATE_REQUIRED)
        if problem is None and "title" not in body and "issue" not in body:
            problem = '"title" wasn\'t supplied.'
        if problem:
            return 422, {"message": f"Invalid request.\n\n{problem}", "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}
        bare = self.repos[repo]
        for field in ("head", "base"):
            ok = subprocess.run(["git", f"--git-dir={bare}", "rev-parse", "--verify", "--quiet", f"refs/heads/{body[field]}"],
                                capture_output=True).returncode == 0
            if not ok:
                return 422, {"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": field,
                                                                          "code": "invalid"}]}
        owner = repo.split("/")[0]
        if any(p["_repo"] == repo and p["head"]["ref"] == body["head"] and p["state"] == "open" for p in self.pulls):
            return 422, {"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom",
                         "message": f"A pull request already exists for {owner}:{body['head']}."}]}
        number = len(self.pulls) + 1
        pr = copy.deepcopy(self.template)
        pr.update({"number": number, "title": body.get("title", ""), "body": body.get("body"), "draft": body.get("draft", False),
                   "state": "open", "url": f"{self.url}/repos/{repo}/pulls/{number}",
                   "html_url": f"https://github.example/{repo}/pull/{number}"})
        sha = subprocess.run(["git", f"--git-dir={bare}", "rev-parse", f"refs/heads/{body['head']}"], capture_output=True,
                             text=True).stdout.strip()
        pr["head"] = {**pr["head"], "ref": body["head"], "sha": sha, "label": f"{owner}:{body['head']}"}
        pr["base"] = {**pr["base"], "ref": body["base"], "label": f"{owner}:{body['base']}"}
        links = {"self": pr["url"], "html": pr["html_url"], "issue": f"{self.url}/repos/{repo}/issues/{number}",
                 "comments": f"{self.url}/repos/{repo}/issues/{number}/comments",
                 "review_comments": f"{pr['url']}/comments", "review_comment": f"{self.url}/repos/{repo}/pulls/comments{{/number}}",
                 "commits": f"{pr['url']}/commits", "statuses": f"{self.url}/repos/{repo}/statuses/{sha}"}
        pr["_links"] = {k: {"href": v} for k, v in links.items()}  # the REST answer has links; webhook payloads omit them
        pr["labels"] = []
        pr["_repo"] = repo
        self.pulls.append(pr)
        return 201, self._public(pr)

    def _update(self, repo: str, number: int, body: dict[str, Any]) -> tuple[int, Any]:
        problem = self._invalid(body, UPDATE_FIELDS, ())
        if problem is None and body.get("state") not in (None, "open", "closed"):
            problem = f'For \'properties/state\', "{body["state"]}" is not one of ["open", "closed"].'
        if problem:
            return 422, {"message": f"Invalid request.\n\n{problem}"}
        pr = next((p for p in self.pulls if p["_repo"] == repo and p["number"] == number), None)
        if pr is None:
            return 404, {"message": "Not Found"}
        pr.update({k: v for k, v in body.items() if k != "base"})
        return 200, self._public(pr)

    @staticmethod
    def _public(pr: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pr.items() if k == "_links" or not k.startswith("_")}
