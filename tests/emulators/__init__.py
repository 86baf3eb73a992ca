"""Local emulators of the external provider APIs AthenaOS integrates with, for tests and `make run`.

`GoogleEmulator` plays Google's OAuth 2.0, Calendar v3, Drive v3 and Health v4 endpoints, and
`MicrosoftEmulator` the Microsoft identity platform v2 and Microsoft Graph v1.0: each one aiohttp server
answering under the real hosts' paths, with the bodies, paging and errors of the official references, and
Python methods that let a test play the user (consent, refusal, revocation) and the provider (expiry,
throttling, data). `PushEmulator` is a Web Push service (RFC 8030, VAPID and aes128gcm checked, messages
decrypted as the device would). tests/service/test_provider_emulators.py holds them to those shapes.
"""

from .google import GoogleEmulator
from .microsoft import MicrosoftEmulator
from .push import PushEmulator

__all__ = ["GoogleEmulator", "MicrosoftEmulator", "PushEmulator"]
