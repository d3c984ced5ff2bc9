"""Routers, one per resource, collected by `api.app.create_app`."""
