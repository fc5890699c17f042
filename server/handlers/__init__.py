"""HTTP handlers: parse the request, call the domain and the store, render with server.wire."""
