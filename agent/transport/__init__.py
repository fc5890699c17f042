"""The seam to the server: a Transport sends protocol Requests and opens the push channel."""
