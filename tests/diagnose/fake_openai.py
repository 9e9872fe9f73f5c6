"""A local HTTP server that speaks the OpenAI chat-completions protocol (``POST
/v1/chat/completions``, the response shape of platform.openai.com's API reference: id, object
"chat.completion", created, model, choices[].message {role, content}, finish_reason, usage
{prompt_tokens, completion_tokens, total_tokens}). Tests script its answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any, float]  # (HTTP status, content string or error body dict, delay in seconds)


def completion(content: str, model: str = "test-model", prompt_tokens: int = 1200, completion_tokens: int = 150) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class FakeOpenAI:
    """``responder(request_body) -> Reply``; every request body is kept in ``requests``."""

    def __init__(self, responder: Callable[[dict], Reply]):
        self.responder = responder
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                outer.requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
                status, content, delay = outer.responder(body)
                if delay:
                    time.sleep(delay)
                if status == 200:
                    payload = completion(content, model=body.get("model", "m"))
                else:
                    payload = content if isinstance(content, dict) else {"error": {"message": str(content),
                                                                                   "type": "server_error"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
