"""A deterministic OpenAI-compatible chat server for the fault drills: `python stub_llm.py PORT`.

Its answer depends only on the request's messages and seed (a number derived from their hash, phrased as a solution
that the checker reads), so the embedded run and the platform get the same completions, and the process can be
killed and started again on the same port to play an LLM server that restarts.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer(body: dict[str, Any]) -> str:
    """One of the numbers in the last message, picked by hash: often right when the prompt shows the gold answer
    (corrections), sometimes right otherwise, so every dataset file gets records."""
    digest = hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).digest()
    numbers = re.findall(r"\d+", str(body["messages"][-1]["content"])) or ["0"]
    return f"Step 1: count carefully.\nThe answer is {numbers[digest[0] % len(numbers)]}"


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = answer(body)
        reply = {
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet: the drills read no access log
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.serve_forever()
