"""`python -m auth [serve | migrate | rotate-keys]`: the auth service and its operator commands."""

from auth.app import AUTH
from mesh.app import main

main(AUTH)
