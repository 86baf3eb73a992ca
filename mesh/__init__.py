"""The shared runtime of every AthenaOS service.

One way to start a server (`mesh.server.serve`), one exception tree (`mesh.errors`), one set of
interceptors (`mesh.interceptors`), one way to call a peer (`mesh.clients`), one access-token verifier
(`mesh.tokens`). Services import from here and never copy any of it.
"""
