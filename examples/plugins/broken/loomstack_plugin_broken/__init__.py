"""A plugin that cannot be imported: a service that enables it logs the reason, lists it as
`failed` and starts without it (or refuses to start when it is required)."""

raise RuntimeError("broken on purpose")
