"""`responses`: answer each row's instruction with the teacher, n samples per instruction.

The prompt is the row's conversation up to (not including) any trailing assistant turns, so the
step also regenerates answers for an existing dataset. Each sample is its own request (seed + i),
so it is cached and resumed on its own. A response the teacher stopped at `max_tokens` goes to
rejects ("truncated at max_tokens", with the cut text) unless `keep_truncated`; every kept row has
the teacher's finish reason in `meta.finish_reason`. A `RowGenerator`: the two methods below are
the whole generator.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from curate.llm import Request, Response
from curate.steps import Context
from synth.base import RowGenerator


def prompt_turns(messages: list[dict]) -> list[dict]:
    """The conversation without its trailing assistant turns."""
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    return messages[:end]


class Responses(RowGenerator):
    """Generate `n` responses per instruction with the recipe's teacher."""

    kind: ClassVar[str] = "responses"
    code_version: ClassVar[int] = 1
    n: int = Field(1, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None
    seed: int | None = None  # default: the recipe's seed
    keep_truncated: bool = False  # keep responses cut at max_tokens (they end mid-answer)

    def requests(self, row: dict[str, Any], ctx: Context) -> list[Request]:
        seed = ctx.seed if self.seed is None else self.seed
        turns = [m for m in prompt_turns(row["messages"]) if m["role"] != "system" or self.system_prompt is None]
        if self.system_prompt is not None:
            turns = [{"role": "system", "content": self.system_prompt}] + turns
        return [Request.chat(turns, max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                             seed=seed + i, sample=i) for i in range(self.n)]

    def parse(self, row: dict[str, Any], request: Request, response: Response) -> dict[str, Any]:
        return {"messages": request.message_dicts() + [{"role": "assistant", "content": response.text or ""}]}

    def prompt_template(self) -> str:
        return self.system_prompt or ""

    def keeps_truncated(self) -> bool:
        return self.keep_truncated
