"""Typed shapes shared by the configuration, the API's requests and responses, and the
OpenAPI document generated from them (pydantic models; docs/architecture.md says why)."""
