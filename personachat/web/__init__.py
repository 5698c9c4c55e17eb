"""The HTTP layer: routes by resource, dependencies, schemas, the middleware, the SSE response."""
