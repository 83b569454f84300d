"""LLM usage, its cost and the budgets it counts against: pure domain logic.

`pricing` turns token counts into a cost with the operator's price table;
`budgets` says whether a spend is within a run's or a tenant's budget, and when a
tenant's budget period began. No I/O, no clock: callers pass the time in.
"""
