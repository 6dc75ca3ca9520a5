"""HTTP adaptation: the FastAPI app, routes, content negotiation, and the error boundary."""
