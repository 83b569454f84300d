"""What tokens cost: a per-model price table (AOB_MODEL_PRICES), in USD per million.

Costs are integers in billionths of a US dollar (nano-USD): they sum exactly in
SQL and in Python whatever the order, so a read model rebuilt from the log adds up
to the same figure. 1 token at $0.15 per million is 150 nano-USD.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

NANO_PER_USD = 10**9
_NANO_PER_TOKEN_AT_ONE_USD_PER_MILLION = Decimal(NANO_PER_USD) / Decimal(10**6)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens. Cached prompt tokens cost `cached_input` (providers
    discount them), `input` when the table gives no cached price."""

    input: float
    output: float
    cached_input: float | None = None

    def as_json(self) -> dict[str, float]:
        """What the usage event records as the price its cost was computed with."""
        cached = self.input if self.cached_input is None else self.cached_input
        return {"input": self.input, "output": self.output, "cached_input": cached}

    def cost_nano(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The cost of these tokens in nano-USD (cached tokens are among the prompt's)."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        usd_millionths = (
            Decimal(str(self.input)) * (prompt_tokens - cached)
            + Decimal(str(cached_price)) * cached
            + Decimal(str(self.output)) * completion_tokens
        )
        nano = usd_millionths * _NANO_PER_TOKEN_AT_ONE_USD_PER_MILLION
        return int(nano.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


PriceTable = Mapping[str, ModelPrice]


def price_of(table: PriceTable, model: str) -> ModelPrice | None:
    """The model's price, or None: its cost is unknown (its tokens still count)."""
    return table.get(model)


def usd(nano: int) -> float:
    return nano / NANO_PER_USD


def nano_usd(amount: float) -> int:
    """A USD amount (a budget) in nano-USD, exactly as written in decimal."""
    return int((Decimal(str(amount)) * NANO_PER_USD).quantize(Decimal(1)))


def format_usd(nano: int | None) -> str:
    """Dollars for people: at least cents, more digits when the amount is tiny."""
    if nano is None:
        return "unknown"
    amount = Decimal(nano) / NANO_PER_USD
    text = f"{amount:.2f}"
    if nano and text in ("0.00", "-0.00"):
        text = f"{amount:.6f}".rstrip("0")
    return text


def recorded_price(value: Any) -> ModelPrice | None:
    """The price a usage event recorded (its `price` field), if it is one."""
    if not isinstance(value, dict):
        return None
    try:
        return ModelPrice(
            float(value["input"]), float(value["output"]), float(value["cached_input"])
        )
    except (KeyError, TypeError, ValueError):
        return None
