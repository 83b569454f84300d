"""The coordinator: a pure fold over one run's events and the state it builds.

`fold.fold(state, event) -> (state, events to emit)` and `fold.replay(events)`;
`state` holds `RunState`. No clock, no randomness, no I/O: hosts (embedded or
faust) feed it events and append what it emits. Nothing is re-exported here, so
`aob.projections.coordinator.fold` always names the module.
"""
