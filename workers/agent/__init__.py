"""The agent runner: `agent` nodes run an LLM with function calling and five tools.

See `runner` (the conversation and its bounds), `tools` (the five tools), `pipeline`
(the fast lane's primitives), `catalog` (composite tools and OpenAPI documents),
`watch` (learning outcomes from the log) and `demo_llm` (a scripted endpoint).
"""

from aob.workers.agent.catalog import ToolCatalog
from aob.workers.agent.config import AgentDefaults
from aob.workers.agent.llm import Endpoint, LlmClients
from aob.workers.agent.runner import AgentRunner
from aob.workers.agent.tools import AgentServices, GuardedFetch

__all__ = [
    "AgentDefaults",
    "AgentRunner",
    "AgentServices",
    "Endpoint",
    "GuardedFetch",
    "LlmClients",
    "ToolCatalog",
]
