"""A deterministic OpenAI-compatible chat server for the fault drills:
`python stub_llm.py PORT QUESTIONS.jsonl DELAY_S` (each answer takes DELAY_S, so a fault can land mid-batch).

Its answer depends only on the request's messages and seed, so the embedded run and the platform get the same
completions, and the process can be killed and started again on the same port to play an LLM server that restarts.
For a prompt about a question of QUESTIONS.jsonl (GSM8K format) it is right two times in three — else one off —
and it always answers in the corrector's labelled format, which the checker reads too: so the dataset gets correct
paths, mistakes, verified and rejected corrections.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GOLD: dict[str, float] = {}
DELAY_S = [0.0]


def answer(body: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).digest()
    prompt = "\n".join(str(message["content"]) for message in body["messages"])
    golds = [gold for question, gold in GOLD.items() if question in prompt]
    number = f"{golds[0] + (digest[0] % 3 == 0):g}" if golds else str(digest[0] % 20)
    return (
        "Incorrect step: 1\nExplanation: the count was off.\n"
        f"Corrected solution:\nStep 1: {number} + 0 = {number}.\nThe answer is {number}"
    )


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = answer(body)
        time.sleep(DELAY_S[0])
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
    DELAY_S[0] = float(sys.argv[3])
    for line in Path(sys.argv[2]).read_text().splitlines():
        row = json.loads(line)
        GOLD[row["question"]] = float(row["answer"].rsplit("####", 1)[1].strip().replace(",", ""))
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
