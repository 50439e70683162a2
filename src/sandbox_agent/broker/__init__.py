"""The broker service: one task queue and token authority for many pilots, over HTTPS
with mutual TLS, every request authorized by the role and scope of the client
certificate that made it.

api.py says what each endpoint takes and who may call it (a table a reviewer reads,
and the OpenAPI document made from it); service.py is the transport (TLS, HTTP,
caps, request log); endpoints.py is what each endpoint does; client.py is the other
end, used by the CLI and the pilot.
"""
