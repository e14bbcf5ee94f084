"""Who is calling, and what they may do: TLS on the listener (`tls`), the authenticators that turn a
request's credentials into a `Caller` (`authn`, `jwks`), the roles and the permission each method
needs (`authz`), quotas per tenant (`quotas`), the audit log (`audit`), and `Guard`, the one door
every CallQosService request passes (`guard`).

A request's identity is decided once, by the Guard, before anything else looks at the request; the
service hands the resulting `Caller` on to the call manager, which checks ownership and tenancy
against the call itself. Nothing below the service reads credentials or metadata.
"""
