"""The LLM judge's client end to end against a local fake OpenAI-compatible endpoint (http.server in a thread):
the request it sends (path, key, model, prompt with the contexts), the score it reads back, retries after a 500,
no retry after a 401, unreadable replies; the configuration from environment variables; the reply parser."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from universality_lib import llm_judge as lj
from universality_lib.errors import UniversalityError


class _Fake:
    """A chat-completions endpoint that answers with queued (status, content) pairs and keeps the requests."""

    def __init__(self):
        self.requests, self.answers = [], []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, content = fake.answers.pop(0) if fake.answers else (200, '{"complexity": 3}')
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}
                                     if status == 200 else {"error": {"message": content}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake():
    f = _Fake()
    yield f
    f.server.shutdown()
    f.server.server_close()


class Tok:
    def decode(self, ids):
        return "".join(f"t{i} " for i in ids)


EXAMPLES = [{"row": 0, "pos": 3, "act": 2.5, "tokens": [1, 2, 3, 4], "values": [0.0, 0.1, 2.5, 0.0]},
            {"row": 4, "pos": 9, "act": 1.25, "tokens": [7, 3], "values": [0.0, 1.25]}]


def test_end_to_end_with_fake_endpoint(fake):
    judge = lj.Judge.from_env({lj.ENV_BASE_URL: fake.url + "/", lj.ENV_MODEL: "judge-1", lj.ENV_API_KEY: "sk-test"})
    text = lj.format_contexts(EXAMPLES, Tok())
    assert text.splitlines() == ["2.50\tt1 t2 [[t3 ]]t4 ", "1.25\tt7 [[t3 ]]"]
    fake.answers.append((200, 'Sure!\n```json\n{"explanation": "the token t3", "complexity": 1, '
                              '"monosemanticity": 5}\n```'))
    out = judge.score(text)
    assert (out["complexity"], out["monosemanticity"], out["explanation"]) == (1, 5, "the token t3")
    req = fake.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-1" and req["body"]["temperature"] == 0.0
    msgs = req["body"]["messages"]
    assert msgs[0] == {"role": "system", "content": lj.SYSTEM_PROMPT} and text in msgs[1]["content"]


def test_retries_and_errors(fake):
    cfg = lj.JudgeConfig(base_url=fake.url, model="m", backoff=0.01)
    judge = lj.Judge(cfg)
    fake.answers += [(500, "overloaded"), (200, '{"complexity": 4, "monosemanticity": 2}')]
    assert judge.score("x")["complexity"] == 4 and len(fake.requests) == 2  # one retry after the 500
    assert fake.requests[-1]["auth"] is None  # no key configured: no header
    fake.answers.append((401, "bad key"))
    with pytest.raises(UniversalityError, match="HTTP 401"):
        judge.score("x")
    assert len(fake.requests) == 3  # no retry for a client error
    fake.answers += [(503, "a"), (503, "b"), (503, "c")]
    with pytest.raises(UniversalityError, match="after 3 attempts"):
        judge.score("x")
    fake.answers += [(200, "I cannot tell."), (200, '{"complexity": 9}')]
    df = judge.score_many({"L0#1": "x", "L0#2": "y"}, progress=False)
    assert list(df.key) == ["L0#1", "L0#2"] and df.complexity.isna().all()
    assert "no complexity" in df.error[0] and "1..5" in df.error[1]


def test_unreachable_endpoint():
    judge = lj.Judge(lj.JudgeConfig(base_url="http://127.0.0.1:9", model="m", max_retries=0, timeout=2))
    with pytest.raises(UniversalityError, match="cannot reach"):
        judge.chat(lj.build_messages("x"))


def test_config_and_parser():
    assert lj.config_from_env({}) is None and lj.Judge.from_env({}) is None
    with pytest.raises(UniversalityError, match=lj.ENV_MODEL):
        lj.config_from_env({lj.ENV_BASE_URL: "http://localhost:1/v1"})
    with pytest.raises(UniversalityError, match="http"):
        lj.config_from_env({lj.ENV_BASE_URL: "localhost:1", lj.ENV_MODEL: "m"})
    cfg = lj.config_from_env({lj.ENV_BASE_URL: "https://api.example/v1", lj.ENV_MODEL: "m", lj.ENV_API_KEY: " "})
    assert cfg.api_key is None and cfg.url == "https://api.example/v1/chat/completions"
    assert lj.parse_score("Complexity: 2, monosemanticity: 4") == {"complexity": 2, "monosemanticity": 4,
                                                                    "explanation": ""}
    assert lj.parse_score('{"note": 1} then {"complexity": "5"}')["complexity"] == 5
    for bad in ("", "complexity: 0", '{"complexity": 2.5}', "nothing here"):
        with pytest.raises(UniversalityError):
            lj.parse_score(bad)
    with pytest.raises(UniversalityError, match="no activating context"):
        lj.format_contexts([], Tok())
