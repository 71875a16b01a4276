"""Event-time runtime: the reorder buffer, the synchronous pipeline, and the live shell around it."""
