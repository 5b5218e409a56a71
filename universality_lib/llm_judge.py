"""The paper's route to feature complexity: ask a language model to rate a feature from its top contexts.

The paper scored features with a language model (which one, and its exact prompt, are not known: paper digest
2.5). This module is that route for users who have an OpenAI-compatible chat endpoint; offline, chapter 4 uses
the data-derived proxies of ``complexity.py`` and says that this step was skipped.

Configuration comes from the environment (nothing is sent anywhere unless the base URL is set):

==============================  =====================================================================
``UNIVERSALITY_LLM_BASE_URL``   the API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1``
                                (requests go to ``{base}/chat/completions``)
``UNIVERSALITY_LLM_MODEL``      the model name the endpoint expects (required with the base URL)
``UNIVERSALITY_LLM_API_KEY``    sent as ``Authorization: Bearer <key>``; optional (local servers often need none)
==============================  =====================================================================

The prompt (:data:`SYSTEM_PROMPT` and :data:`USER_TEMPLATE`) asks for one JSON object with an integer
``complexity`` (1 = one specific token, 5 = no simple description) and ``monosemanticity`` (1-5) and a one-line
``explanation``; :func:`parse_score` reads it (also from a reply wrapped in a code fence or in prose). The client
is the standard library's ``urllib`` (no extra dependency), temperature 0, a few retries on network errors,
HTTP 429 and 5xx.

Glossary: a feature's *contexts* are its strongest activations (``saes.top_activations``) as text, the peak
token in ``[[double brackets]]`` (``saes.context_text``).
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .errors import UniversalityError

__all__ = ["ENV_BASE_URL", "ENV_API_KEY", "ENV_MODEL", "SYSTEM_PROMPT", "USER_TEMPLATE", "JudgeConfig",
           "config_from_env", "format_contexts", "build_messages", "parse_score", "Judge"]

ENV_BASE_URL = "UNIVERSALITY_LLM_BASE_URL"
ENV_API_KEY = "UNIVERSALITY_LLM_API_KEY"
ENV_MODEL = "UNIVERSALITY_LLM_MODEL"
SCALE = (1, 5)

SYSTEM_PROMPT = """\
You are an interpretability researcher studying the features of a neural language model. A feature is a \
direction in the model's internal activations; it activates on some tokens and not on others. You are shown \
the text excerpts on which one feature activates most strongly. In every excerpt the token where the feature \
peaks is marked with [[double brackets]], and the line starts with that peak activation.

Rate the feature on two integer scales.

complexity (how much must be understood to predict where the feature fires):
  1 = a single specific token or string, whatever the context
  2 = a small set of closely related tokens (e.g. spellings or inflections of one word, digits)
  3 = a specific token in a particular local context (e.g. a name right after "def")
  4 = an abstract concept that different tokens express and that needs the surrounding context
  5 = no simple description fits (the excerpts look unrelated, or the rule is very intricate)

monosemanticity (do the excerpts share one pattern?):
  1 = no common pattern
  3 = a common pattern in about half of the excerpts
  5 = every excerpt shows the same single pattern

Reply with a single JSON object and nothing else:
{"explanation": "<one sentence describing the feature>", "complexity": <1-5>, "monosemanticity": <1-5>}"""

USER_TEMPLATE = """\
Top activating excerpts of the feature (one per line):

{contexts}"""


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask (see the module docstring for the environment variables)."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0  # seconds per request
    max_retries: int = 2  # extra attempts after a network error, HTTP 429 or 5xx
    backoff: float = 1.0  # seconds before the first retry, doubled each time
    temperature: float = 0.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def config_from_env(environ=None) -> JudgeConfig | None:
    """The endpoint configured in the environment, or None when ``UNIVERSALITY_LLM_BASE_URL`` is not set."""
    env = os.environ if environ is None else environ
    base = (env.get(ENV_BASE_URL) or "").strip()
    if not base:
        return None
    if not base.startswith(("http://", "https://")):
        raise UniversalityError(f"{ENV_BASE_URL} must be an http(s) URL such as https://api.openai.com/v1, "
                                f"got {base!r}")
    model = (env.get(ENV_MODEL) or "").strip()
    if not model:
        raise UniversalityError(f"{ENV_BASE_URL} is set but {ENV_MODEL} is not: set it to the model name the endpoint "
                                "serves (e.g. gpt-4o-mini).")
    return JudgeConfig(base_url=base, model=model, api_key=(env.get(ENV_API_KEY) or "").strip() or None)


def format_contexts(examples: list[dict], tokenizer) -> str:
    """One line per top activation (``saes.top_activations``): the peak activation, then the window with the
    peak token in ``[[double brackets]]``."""
    from .saes import context_text

    if not examples:
        raise UniversalityError("the feature has no activating context to show the judge")
    return "\n".join(f"{ex['act']:.2f}\t{context_text(tokenizer, ex)}" for ex in examples)


def build_messages(contexts: str) -> list[dict]:
    """The chat messages sent for one feature."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(contexts=contexts)}]


def _score(value, field: str) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UniversalityError(f"the judge's {field} is not a number: {value!r}") from None
    if not v.is_integer() or not SCALE[0] <= v <= SCALE[1]:
        raise UniversalityError(f"the judge's {field} must be an integer in {SCALE[0]}..{SCALE[1]}, got {value!r}")
    return int(v)


def parse_score(text: str) -> dict:
    """``{"complexity": int, "monosemanticity": int | None, "explanation": str}`` from the judge's reply: the
    first JSON object in it (a code fence or prose around it is fine), else ``complexity: N`` written out.
    Raises UniversalityError when no complexity in 1..5 can be read."""
    if not isinstance(text, str) or not text.strip():
        raise UniversalityError("the judge's reply is empty")
    for m in re.finditer(r"\{.*?\}", text, flags=re.S):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "complexity" in obj:
            mono = obj.get("monosemanticity")
            return {"complexity": _score(obj["complexity"], "complexity"),
                    "monosemanticity": None if mono is None else _score(mono, "monosemanticity"),
                    "explanation": str(obj.get("explanation", "")).strip()}
    m = re.search(r"complexity\W{0,5}(\d+)", text, flags=re.I)
    if m:
        mono = re.search(r"monosemanticity\W{0,5}(\d+)", text, flags=re.I)
        return {"complexity": _score(m.group(1), "complexity"),
                "monosemanticity": _score(mono.group(1), "monosemanticity") if mono else None, "explanation": ""}
    raise UniversalityError(f"no complexity score in the judge's reply: {text[:200]!r}")


class Judge:
    """A client of one OpenAI-compatible chat endpoint that rates features."""

    def __init__(self, config: JudgeConfig):
        self.config = config

    @classmethod
    def from_env(cls, environ=None) -> "Judge | None":
        cfg = config_from_env(environ)
        return cls(cfg) if cfg is not None else None

    def chat(self, messages: list[dict]) -> str:
        """POST the messages to ``{base}/chat/completions``; the content of the first choice."""
        c = self.config
        body = json.dumps({"model": c.model, "messages": messages, "temperature": c.temperature}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        delay, last = c.backoff, None
        for attempt in range(c.max_retries + 1):
            req = urllib.request.Request(c.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=c.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                last = f"HTTP {e.code} from {c.url}: {detail}"
                if e.code != 429 and e.code < 500:  # a bad request or key: retrying will not help
                    raise UniversalityError(last) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"cannot reach {c.url}: {getattr(e, 'reason', e)}"
            except json.JSONDecodeError:
                raise UniversalityError(f"{c.url} did not answer with JSON") from None
            if attempt < c.max_retries:
                time.sleep(delay)
                delay *= 2
        else:
            raise UniversalityError(f"{last} (after {c.max_retries + 1} attempts)")
        try:
            return payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UniversalityError(f"unexpected answer from {c.url} (no choices[0].message.content): "
                                    f"{str(payload)[:200]}") from None

    def score(self, contexts: str) -> dict:
        """Rate one feature from its contexts text (:func:`format_contexts`): :func:`parse_score` of the reply,
        plus the raw reply."""
        reply = self.chat(build_messages(contexts))
        return {**parse_score(reply), "reply": reply}

    def score_many(self, items: dict, progress: bool = True):
        """``items``: ``{key: contexts text}``. pandas DataFrame, one row per key: complexity, monosemanticity,
        explanation, reply, error (a feature whose reply cannot be read gets NaN and the error message)."""
        import pandas as pd
        from tqdm.auto import tqdm

        recs = []
        for key, text in tqdm(items.items(), desc="LLM judge", disable=not progress):
            try:
                recs.append({"key": key, **self.score(text), "error": None})
            except UniversalityError as e:
                recs.append({"key": key, "complexity": float("nan"), "monosemanticity": float("nan"),
                             "explanation": "", "reply": None, "error": str(e)})
        return pd.DataFrame(recs)
