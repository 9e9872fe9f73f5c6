"""A local HTTP server speaking OpenAI's chat-completions protocol (``POST /v1/chat/completions``)
that plays back recorded answers in order, so the real ``openai`` SDK client talks to it.

Each answer is the assistant message's content (a string), or ``{"sleep": seconds}`` to hold
the request longer than the client's timeout. Requests are kept in ``requests`` (their JSON)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeChat:
    def __init__(self, answers: list[Any], prompt_tokens: int = 1200, completion_tokens: int = 150):
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.loads(raw)
                outer.requests.append(body)
                answer = outer.answers.pop(0) if outer.answers else "{}"
                if isinstance(answer, dict) and "sleep" in answer:
                    time.sleep(float(answer["sleep"]))
                    answer = "{}"
                data = {"id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "m"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": outer.prompt_tokens, "completion_tokens": outer.completion_tokens,
                                  "total_tokens": outer.prompt_tokens + outer.completion_tokens}}
                out = json.dumps(data).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the client gave up (timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
