"""LLM access: one request API for chat and raw completion, used by every generator and judge."""

from curate.llm.base import Backend, Request, Response
from curate.llm.cache import ResponseCache
from curate.llm.client import LLM, Price, Usage
from curate.llm.teacher import TeacherConfig, build_llm

__all__ = ["Backend", "Request", "Response", "ResponseCache", "LLM", "Price", "Usage", "TeacherConfig", "build_llm"]
