"""`python -m auth [serve | migrate | rotate-keys]`: the auth service and its operator commands."""

from auth.app import AUTH
from mesh.app import main

if __name__ == "__main__":
    main(AUTH)
