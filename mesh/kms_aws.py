"""AWS KMS as the KMS of envelope encryption (`mesh.kms`), through boto3, the official client.

- `wrap` is `Encrypt` under the configured key, with the wrap's context as the EncryptionContext; the
  wrapped key records the key ARN KMS reports as its `kek_id`.
- `unwrap` is `Decrypt` with the same EncryptionContext and the `kek_id` as KeyId, so a blob wrapped by
  another key than the one it names is refused.
- `rewrap` is `ReEncrypt` from the `kek_id` to the current key: the data key is decrypted and encrypted
  again inside KMS and never leaves it in plaintext.

The configured key may be a key id, a key ARN, an alias name (`alias/athena`) or an alias ARN. It is resolved
once per process with DescribeKey to its key ARN (what `current_kek_id` returns and every new wrapped key
records) and checked to be an enabled symmetric encryption key, so a misconfigured key fails on first use
with a message saying what is wrong. Resolution happens on first use, never in `__init__`: `wrap` and
`rewrap` resolve off the event loop; reading `current_kek_id` before either has run blocks the caller for
that one DescribeKey (bounded by the client's timeouts) — `await kms.resolve()` at start-up avoids it.
Pointing an alias at another key takes effect at each process's next start.

boto3 is synchronous: every call runs in a worker thread (`asyncio.to_thread`), and so does making the
client on first use (finding credentials may itself be a request: instance metadata, a web identity).
Credentials come from boto3's default chain (environment, web identity token — IRSA on EKS —, shared
config, container or instance metadata); `endpoint_url` points at a VPC endpoint or an emulator.

Errors are translated once, here, from AWS's error codes, most specific first (`_CODES`):

    KmsError                 the key is disabled, pending deletion, missing or not allowed to us; KMS is
     │                       throttling, unreachable or failing; the credentials are missing or refused
     └── KeyMismatch         InvalidCiphertextException (tampered, or another owner's or service's
                             context), IncorrectKeyException (wrapped by another key than it names)

No message carries key material: botocore's own validation errors, which can quote a request's values, are
reported without their text, and botocore's DEBUG logs (which print request and response bodies, data keys
included) are held at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

import boto3
from botocore import exceptions as aws
from botocore.config import Config

from mesh.kms import KeyMismatch, KmsError, WrappedKey

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

_T = TypeVar("_T")

_POLICY = "kms:Encrypt, kms:Decrypt, kms:ReEncrypt* and kms:DescribeKey"

_CODES: tuple[tuple[frozenset[str], type[KmsError], str], ...] = (
    (
        frozenset({"InvalidCiphertextException"}),
        KeyMismatch,
        "a wrapped data key does not open with its context (tampered, or another owner's or service's)",
    ),
    (
        frozenset({"IncorrectKeyException"}),
        KeyMismatch,
        "a wrapped data key was not wrapped by {key}, the key it names",
    ),
    (frozenset({"DisabledException"}), KmsError, "AWS KMS key {key} is disabled"),
    (
        frozenset({"KMSInvalidStateException"}),
        KmsError,
        "AWS KMS key {key} is not usable in its current state (pending deletion, or pending import)",
    ),
    (
        frozenset({"NotFoundException"}),
        KmsError,
        "AWS KMS key {key} does not exist in this account and region",
    ),
    (
        frozenset({"AccessDeniedException"}),
        KmsError,
        f"AWS KMS denied {{operation}} with key {{key}}: its key policy (or IAM) must allow {_POLICY}",
    ),
    (
        frozenset({"InvalidKeyUsageException"}),
        KmsError,
        "AWS KMS key {key} is not a symmetric encryption key (ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT)",
    ),
    (
        frozenset({"ThrottlingException", "LimitExceededException"}),
        KmsError,
        "AWS KMS throttled {operation} (request quota exceeded)",
    ),
    (
        frozenset(
            {
                "KeyUnavailableException",
                "DependencyTimeoutException",
                "KMSInternalException",
                "InternalFailure",
                "ServiceUnavailable",
            }
        ),
        KmsError,
        "AWS KMS is unavailable for {operation} right now",
    ),
    (
        frozenset(
            {
                "UnrecognizedClientException",
                "InvalidClientTokenId",
                "InvalidSignatureException",
                "IncompleteSignature",
                "ExpiredTokenException",
            }
        ),
        KmsError,
        "AWS KMS does not accept this service's AWS credentials",
    ),
)
"""AWS error code → our exception and message ({operation}, {key}), most specific first."""


def client_config() -> Config:
    """Bounded waits, AWS's standard retries (three attempts in all, with jittered backoff, of transient
    errors and throttling only) and a pooled connection for each thread `asyncio.to_thread`'s default
    executor may have."""
    return Config(
        connect_timeout=2.0,
        read_timeout=5.0,
        retries={"mode": "standard", "total_max_attempts": 3},
        max_pool_connections=32,
    )


class AwsKms:
    """An AWS KMS key (symmetric encryption) wrapping data keys; every key it can decrypt unwraps."""

    def __init__(
        self,
        key_id: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        config: Config | None = None,
    ) -> None:
        if not key_id:
            raise KmsError("no AWS KMS key id")
        self._key_id = key_id
        self._region = region
        self._endpoint_url = endpoint_url
        self._config = config if config is not None else client_config()
        self._client: KMSClient | None = None
        self._client_lock = threading.Lock()
        self._key_arn: str | None = None
        self._resolve_lock = threading.Lock()
        # botocore logs request and response bodies at DEBUG: Plaintext, a data key, would be among them.
        botocore_log = logging.getLogger("botocore")
        if botocore_log.level < logging.INFO:
            botocore_log.setLevel(logging.INFO)

    def __repr__(self) -> str:
        return (
            f"AwsKms(key_id={self._key_id!r}, region={self._region!r}, endpoint_url={self._endpoint_url!r})"
        )

    @property
    def current_kek_id(self) -> str:
        """The configured key's ARN; the first read before any `wrap`, `rewrap` or `resolve` blocks for
        one DescribeKey."""
        if self._key_arn is not None:
            return self._key_arn
        return self._resolve_sync()

    async def resolve(self) -> str:
        """Resolves the configured key to its ARN (once) and checks it can wrap; raises `KmsError`."""
        if self._key_arn is not None:
            return self._key_arn
        return await asyncio.to_thread(self._resolve_sync)

    async def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        key_arn = await self.resolve()
        response = await self._call(
            "Encrypt",
            key_arn,
            lambda kms: kms.encrypt(KeyId=key_arn, Plaintext=data_key, EncryptionContext=dict(context)),
        )
        return WrappedKey(response["KeyId"], response["CiphertextBlob"])

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        response = await self._call(
            "Decrypt",
            wrapped.kek_id,
            lambda kms: kms.decrypt(
                CiphertextBlob=wrapped.blob, KeyId=wrapped.kek_id, EncryptionContext=dict(context)
            ),
        )
        return response["Plaintext"]

    async def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        key_arn = await self.resolve()
        response = await self._call(
            "ReEncrypt",
            wrapped.kek_id,
            lambda kms: kms.re_encrypt(
                CiphertextBlob=wrapped.blob,
                SourceKeyId=wrapped.kek_id,
                SourceEncryptionContext=dict(context),
                DestinationKeyId=key_arn,
                DestinationEncryptionContext=dict(context),
            ),
        )
        return WrappedKey(response["KeyId"], response["CiphertextBlob"])

    def _resolve_sync(self) -> str:
        with self._resolve_lock:
            if self._key_arn is not None:
                return self._key_arn
            metadata = self._call_sync(
                "DescribeKey", self._key_id, lambda kms: kms.describe_key(KeyId=self._key_id)
            )["KeyMetadata"]
            arn = metadata.get("Arn")
            if not arn:
                raise KmsError(f"AWS KMS described key {self._key_id} without its ARN")
            named = self._key_id if arn == self._key_id else f"{self._key_id} ({arn})"
            state = metadata.get("KeyState", "Enabled")
            if state != "Enabled":
                raise KmsError(
                    f"AWS KMS key {named} is {state}, not Enabled: it cannot wrap data keys (enable it, or "
                    "set ATHENA_KMS_AWS_KEY_ID to another key)"
                )
            usage, spec = (
                metadata.get("KeyUsage", "ENCRYPT_DECRYPT"),
                metadata.get("KeySpec", "SYMMETRIC_DEFAULT"),
            )
            if (usage, spec) != ("ENCRYPT_DECRYPT", "SYMMETRIC_DEFAULT"):
                raise KmsError(
                    f"AWS KMS key {named} is {usage} {spec}: envelope encryption needs a symmetric "
                    "encryption key (ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT)"
                )
            self._key_arn = arn
            return arn

    async def _call(self, operation: str, key: str, request: Callable[[KMSClient], _T]) -> _T:
        return await asyncio.to_thread(self._call_sync, operation, key, request)

    def _call_sync(self, operation: str, key: str, request: Callable[[KMSClient], _T]) -> _T:
        try:
            return request(self._kms())
        except aws.ClientError as exc:
            raise _translate(exc, operation, key) from exc
        except aws.ParamValidationError:  # its text can quote the request's values: a data key
            raise KmsError(f"AWS KMS {operation}: the client refused the request as invalid") from None
        except (aws.NoCredentialsError, aws.PartialCredentialsError, aws.CredentialRetrievalError) as exc:
            raise KmsError(
                f"no usable AWS credentials for KMS ({exc}): boto3's default chain looks in the environment, "
                "a web identity token (IRSA), the shared config, and container or instance metadata"
            ) from exc
        except aws.NoRegionError as exc:
            raise KmsError("no AWS region for KMS: set AWS_REGION") from exc
        except (aws.ConnectionError, aws.HTTPClientError) as exc:
            raise KmsError(f"cannot reach AWS KMS for {operation}: {exc}") from exc
        except aws.BotoCoreError as exc:
            raise KmsError(f"the AWS KMS client failed in {operation} ({type(exc).__name__})") from exc

    def _kms(self) -> KMSClient:
        with self._client_lock:
            if self._client is None:
                # A session of our own: boto3's default session is not safe to share between threads.
                self._client = boto3.session.Session().client(
                    "kms", region_name=self._region, endpoint_url=self._endpoint_url, config=self._config
                )
            return self._client


def _translate(exc: aws.ClientError, operation: str, key: str) -> KmsError:
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    detail = f" ({code}: {error['Message']})" if error.get("Message") else f" ({code})"
    for codes, kind, message in _CODES:
        if code in codes:
            return kind(message.format(operation=operation, key=key) + detail)
    return KmsError(f"AWS KMS refused {operation} with key {key}{detail}")
